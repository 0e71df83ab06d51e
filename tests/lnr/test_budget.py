"""The flip budget: expected flips from the rates, against the flip engine's draws; its bisection."""

from __future__ import annotations

import numpy as np
import pytest

from lnr_dist.lnr import (
    BudgetOutOfReach,
    ExpectedFlips,
    accumulate_stats,
    candidates_for_rows,
    flips_from_candidates,
    threshold_for_budget,
)

T_MIN = 0.5


@pytest.fixture(scope="module")
def candidates(long_tailed_set):
    """Candidates at t_min 0.5 of the synthetic 12-class set (619 samples; ~300 with a candidate, many with 2+)."""
    probs, labels = long_tailed_set
    moments = accumulate_stats(probs, labels, 256).moments()
    found = candidates_for_rows(probs, labels, np.arange(labels.size), moments, T_MIN, 256)
    assert np.bincount(np.unique(found.index, return_counts=True)[1]).size > 3  # samples with 3+ candidates
    return found, moments.prior, labels.size


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.12, 0.2])
def test_bisection_hits_the_budget_within_one_flip(candidates, fraction):
    found, prior, n = candidates
    result = threshold_for_budget(found, prior, fraction * n)
    expected = ExpectedFlips.of(found, prior)(result.threshold)
    assert result.threshold >= T_MIN and result.expected == expected
    assert abs(expected - fraction * n) <= 1.0
    assert result.steps < 80 and result.at_t_min == ExpectedFlips.of(found, prior)(T_MIN)


def test_expected_flips_never_rise_with_the_threshold(candidates):
    found, prior, _ = candidates
    expected = ExpectedFlips.of(found, prior)
    grid = np.linspace(T_MIN, found.z.max() + 0.5, 2001)
    values = np.array([expected(t) for t in grid])
    assert np.all(np.diff(values) <= 0) and values[0] > 100 and values[-1] == 0.0
    per_sample = np.array([expected.per_sample(t) for t in grid[::50]])
    assert np.all(np.diff(per_sample, axis=0) <= 0) and np.all((per_sample >= 0) & (per_sample < 1))


@pytest.mark.parametrize("threshold", [0.5, 1.0, 2.0])
def test_expected_flips_are_the_mean_of_the_engine_over_seeds(candidates, threshold):
    """The realised count is a sum of independent per-sample Bernoullis (P = 1 - prod (1 - r_k)): its mean over S
    seeds lies within 3 sigma of the expectation, sigma^2 = sum p (1 - p) / S; neither the sum of the rates nor
    the highest rate per sample (what the highest-rate rule might suggest) does."""
    found, prior, _ = candidates
    expected = ExpectedFlips.of(found, prior)
    p = expected.per_sample(threshold)
    seeds = 300
    realised = np.mean([len(flips_from_candidates(found, prior, threshold, seed)) for seed in range(seeds)])
    sigma = np.sqrt(np.sum(p * (1 - p)) / seeds)
    assert abs(realised - expected(threshold)) <= 3 * sigma
    above = found.z > threshold
    rate = np.tanh(found.z[above] - threshold) * (prior[found.cls[above]] - prior[found.label[above]])
    _, sample = np.unique(found.index[above], return_inverse=True)
    highest = np.zeros(sample.max() + 1)
    np.maximum.at(highest, sample, rate)
    for wrong in (rate.sum(), highest.sum()):
        assert abs(realised - wrong) > 3 * sigma


def test_a_budget_beyond_the_candidates_t_min_is_out_of_reach(candidates):
    found, prior, _ = candidates
    most = ExpectedFlips.of(found, prior)(T_MIN)
    assert threshold_for_budget(found, prior, most + 0.4).threshold == T_MIN  # within half a flip of t_min's
    with pytest.raises(BudgetOutOfReach, match=r"below t_min = 0.5") as error:
        threshold_for_budget(found, prior, most + 2)
    assert error.value.reachable == most and error.value.t_min == T_MIN
    with pytest.raises(ValueError, match="budget > 0"):
        threshold_for_budget(found, prior, 0.0)


def test_expected_flips_below_t_min_are_refused(candidates):
    found, prior, _ = candidates
    with pytest.raises(ValueError, match="below the candidates' t_min"):
        ExpectedFlips.of(found, prior)(T_MIN - 0.1)
