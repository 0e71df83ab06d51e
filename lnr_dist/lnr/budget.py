"""The threshold whose EXPECTED number of LNR flips is a given budget, from the sparse candidates (no training).

The flip engine (flips.py, `flips_from_candidates`) gives candidate (i, k) the rate
    r_ik(t) = tanh(z_ik - t) * (prior_k - prior_label_i)     for z_ik > t (0 otherwise)
and accepts it when r_ik > u_ik, u_ik = uniforms(seed, i, k) in [0, 1) (rng.py; any round's stream), so
P(accept) = r_ik; the draws of different (i, k) are hashes of different counters, independent for this purpose.
Sample i flips when ANY of its candidates is accepted; the highest-rate rule only picks WHICH accepted class it
moves to, not whether it moves. So
    P(i flips | t) = 1 - prod_k (1 - r_ik(t)),        E[flips](t) = sum_i P(i flips | t).
Each r_ik(t) is continuous and non-increasing in t (tanh is increasing, and a term leaves the set z > t exactly
where it reaches 0), so E[flips] is continuous and non-increasing in t: bisection over t finds the threshold whose
expected count is the budget to any tolerance. r_ik <= prior gap < 1, so every log(1 - r_ik) is finite.

The candidates hold every (i, k) with z_ik > t_min, so E[flips](t) is exact for t >= t_min only: a budget above
E[flips](t_min) needs candidates from a lower t_min (BudgetOutOfReach).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .flips import Candidates

# bisection stops once |E[flips] - budget| is at most this many flips (half a flip: within one, with room)
DEFAULT_TOLERANCE = 0.5
# float64 bisection over any finite range reaches adjacent floats long before this
_MAX_STEPS = 2000


class BudgetOutOfReach(ValueError):
    """The budget needs a threshold below the candidates' t_min: `reachable` is E[flips](t_min)."""

    def __init__(self, budget: float, reachable: float, t_min: float) -> None:
        super().__init__(
            f"a budget of {budget:g} expected flips needs a threshold below t_min = {t_min:g}, where the "
            f"candidates give {reachable:.1f} expected flips at most"
        )
        self.budget = budget
        self.reachable = reachable
        self.t_min = t_min


@dataclass(frozen=True)
class ExpectedFlips:
    """E[flips](t) over candidates, with the per-sample grouping computed once (bisection evaluates it often).

    Args:
        candidates: the inference job's sparse candidates ((M,) index, label, cls, z; t_min).
        prior: (C,) float64 class prior of the flip rule (candidates.npz's `prior`).
    """

    t_min: float
    z: np.ndarray  # (M,) float64
    gap: np.ndarray  # (M,) float64 prior_cls - prior_label, > 0 for every candidate
    sample: np.ndarray  # (M,) int64 position of the candidate's sample among the S distinct samples
    num_samples: int  # S

    @classmethod
    def of(cls, candidates: Candidates, prior: np.ndarray) -> ExpectedFlips:
        prior = np.asarray(prior, dtype=np.float64)
        distinct, sample = np.unique(candidates.index, return_inverse=True)
        gap = prior[candidates.cls] - prior[candidates.label]
        return cls(
            float(candidates.t_min), np.asarray(candidates.z, np.float64), gap, sample, int(distinct.size)
        )

    def per_sample(self, threshold: float) -> np.ndarray:
        """(S,) float64 P(sample flips) at `threshold` (>= t_min), in the order of the distinct sample indices."""
        if threshold < self.t_min:
            raise ValueError(f"threshold {threshold} is below the candidates' t_min {self.t_min}")
        above = self.z > threshold
        rate = np.tanh(self.z[above] - threshold) * self.gap[above]
        # log prod (1 - r) as a sum per sample: one bincount, no Python loop over samples
        log_stay = np.bincount(self.sample[above], weights=np.log1p(-rate), minlength=self.num_samples)
        return -np.expm1(log_stay)

    def __call__(self, threshold: float) -> float:
        """E[flips] at `threshold` (>= t_min)."""
        return float(self.per_sample(threshold).sum())


@dataclass(frozen=True)
class BudgetThreshold:
    """The bisection's answer: `threshold` with `expected` flips, within `tolerance` of `budget` (flips), found in
    `steps` evaluations; `at_t_min` = E[flips](t_min), the most the candidates allow."""

    threshold: float
    expected: float
    budget: float
    tolerance: float
    steps: int
    at_t_min: float


def threshold_for_budget(
    candidates: Candidates, prior: np.ndarray, budget: float, tolerance: float = DEFAULT_TOLERANCE
) -> BudgetThreshold:
    """The threshold t >= candidates.t_min with |E[flips](t) - budget| <= tolerance, by bisection.

    Args:
        candidates: sparse candidates of the inference job (every (i, k) with z_ik > t_min).
        prior: (C,) class prior of the flip rule.
        budget: expected flips wanted (> 0; a fraction F of the training set is budget = F x N).
        tolerance: accepted distance in flips (> 0; default half a flip).

    Raises:
        ValueError: budget or tolerance not > 0.
        BudgetOutOfReach: budget > E[flips](t_min) + tolerance (a lower t_min is needed).
    """
    if not budget > 0 or not tolerance > 0:
        raise ValueError(f"need budget > 0 and tolerance > 0, got {budget} and {tolerance}")
    expected = ExpectedFlips.of(candidates, prior)
    low = expected.t_min
    at_t_min = at_low = expected(low)
    if budget > at_t_min + tolerance:
        raise BudgetOutOfReach(budget, at_t_min, low)
    # E(t) = 0 at t = max z (no z_ik exceeds it); E(low) >= budget - tolerance: the answer lies in [low, high]
    high, at_high = (float(expected.z.max()) if expected.z.size else low), 0.0
    steps = 1
    while steps < _MAX_STEPS:
        for threshold, value in ((low, at_low), (high, at_high)):
            if abs(value - budget) <= tolerance:
                return BudgetThreshold(threshold, value, budget, tolerance, steps, at_t_min)
        middle = 0.5 * (low + high)
        if middle in (low, high):  # adjacent floats: E jumps by more than the tolerance here (never seen)
            break
        value = expected(middle)
        steps += 1
        if value >= budget:
            low, at_low = middle, value
        else:
            high, at_high = middle, value
    threshold, value = (low, at_low) if at_low - budget <= budget - at_high else (high, at_high)
    return BudgetThreshold(threshold, value, budget, tolerance, steps, at_t_min)
