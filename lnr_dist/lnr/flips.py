"""The LNR flip rule, vectorised and seeded (paper Sec. 3; reference `get_flip_labels`).

For a sample i with label c and averaged softmax p_i:
    z_ik    = (p_ik - mean_k) / std_k                   mean/std of p_k over samples not labelled k
    rate_ik = tanh(z_ik - threshold) * max(prior_k - prior_c, 0)
    u_ik    = uniform(seed, i, k)                      counter-based, see rng.py (round r >= 2: its own stream)
A class k is a candidate when rate_ik > u_ik; the candidate with the highest rate wins, ties to the lowest k.

Only entries with z > threshold and prior_k > prior_c can have a positive rate, and u >= 0, so the rule is
evaluated on those "candidates" only. Sweeps keep the candidates for the lowest threshold t_min once and
re-derive flips for any threshold >= t_min from them; the dense engine is the same code with t_min = threshold,
so both paths agree bit for bit.

Iterated LNR (round r >= 2) runs the same rule on the predictions of round r-1's model with the labels as round
r-1 left them (the statistics, the prior and the candidates' `label` are those labels'), drawing from round r's
stream (`round`); round 1 is the rule as above.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .blocks import map_blocks
from .rng import uniforms
from .stats import ClassMoments, ClassStats, accumulate_stats, mean_std_of
from .table import FlipTable

# A block of rows is sized so its float64 working arrays stay near this many bytes (see default_chunk_rows):
# small enough to stay in cache, large enough that NumPy's per-call overhead does not matter.
CHUNK_BYTES = 2 * 2**20
# Relative slack of the float32 prefilter in find_candidates; float64 rounding is ~1e-16, so this never drops one.
_PREFILTER_SLACK = 1e-9


def default_chunk_rows(num_classes: int) -> int:
    """Rows per block: about CHUNK_BYTES of float64 per working array, whatever C is."""
    return max(1, CHUNK_BYTES // (8 * max(num_classes, 1)))


def standardize(probs: np.ndarray, moments: ClassMoments) -> np.ndarray:
    """(R, C) probabilities -> (R, C) float64 z-scores (0 where the class is not valid)."""
    z = (np.asarray(probs, dtype=np.float64) - moments.mean) / moments.std
    z[:, ~moments.valid] = 0.0
    return z


def prior_gap(labels: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """(R,) labels -> (R, C) prior_k - prior_label (may be negative)."""
    return prior[None, :] - prior[np.asarray(labels, dtype=np.int64)][:, None]


def flip_rates(probs: np.ndarray, labels: np.ndarray, moments: ClassMoments, threshold: float) -> np.ndarray:
    """Dense (R, C) rates tanh(z - threshold) * max(prior gap, 0); 0 for classes that cannot receive flips."""
    rate = np.tanh(standardize(probs, moments) - threshold) * np.maximum(
        prior_gap(labels, moments.prior), 0.0
    )
    rate[:, ~moments.valid] = 0.0
    return rate


@dataclass(frozen=True)
class Candidates:
    """Sparse (sample, class) pairs that can flip at any threshold >= t_min. All arrays are (M,).

    index: dataset index of the sample; label: its current label; cls: the rarer class; z: float64 z-score.
    """

    t_min: float
    index: np.ndarray
    label: np.ndarray
    cls: np.ndarray
    z: np.ndarray

    @classmethod
    def concat(cls, parts: list[Candidates], t_min: float) -> Candidates:
        if not parts:
            empty_int = np.zeros(0, dtype=np.int64)
            return cls(t_min, empty_int, empty_int, empty_int, np.zeros(0))
        return cls(
            t_min,
            *(np.concatenate([getattr(p, f) for p in parts]) for f in ("index", "label", "cls", "z")),
        )

    def __len__(self) -> int:
        return int(self.index.shape[0])


def _prefilter_cutoffs(moments: ClassMoments, t_min: float, dtype: np.dtype) -> np.ndarray:
    """(C,) cutoffs in the probabilities' dtype, slightly below mean + t_min * std; +inf for invalid classes.

    Comparing raw probabilities against them is one cheap pass that keeps every entry with z > t_min (and a few
    more); the exact float64 z test then runs on the survivors only.
    """
    cutoff = moments.mean + t_min * moments.std
    cutoff -= _PREFILTER_SLACK * (np.abs(moments.mean) + abs(t_min) * moments.std + moments.std)
    cutoff[~moments.valid] = np.inf
    return np.nextafter(cutoff.astype(dtype), -np.inf)


def find_candidates(
    probs: np.ndarray, labels: np.ndarray, indices: np.ndarray, moments: ClassMoments, t_min: float
) -> Candidates:
    """Keep (index, class, z) with z > t_min, prior_class > prior_label and a valid class; block of rows."""
    block = np.asarray(probs)
    if block.dtype == np.float16:
        block = block.astype(np.float32)
    flat = np.flatnonzero(block > _prefilter_cutoffs(moments, t_min, block.dtype))
    rows, cols = np.divmod(flat, block.shape[1])
    label = np.asarray(labels, dtype=np.int64)[rows]
    # Same elementwise float64 operations as standardize(), so z is bit-identical to the dense path.
    z = (block[rows, cols].astype(np.float64) - moments.mean[cols]) / moments.std[cols]
    keep = (z > t_min) & (moments.prior[cols] > moments.prior[label])
    return Candidates(
        float(t_min), np.asarray(indices, dtype=np.int64)[rows[keep]], label[keep], cols[keep], z[keep]
    )


def flips_from_candidates(
    candidates: Candidates, prior: np.ndarray, threshold: float, seed: int, round: int = 1
) -> FlipTable:
    """Draw the flips for `threshold` (>= candidates.t_min) from candidates, with round `round`'s uniforms;
    order-independent."""
    if threshold < candidates.t_min:
        raise ValueError(f"threshold {threshold} is below the candidates' t_min {candidates.t_min}")
    above = candidates.z > threshold
    index, label, cls, z = (
        a[above] for a in (candidates.index, candidates.label, candidates.cls, candidates.z)
    )
    rate = np.tanh(z - threshold) * (prior[cls] - prior[label])
    accepted = rate > uniforms(seed, index, cls, round)
    index, label, cls, rate = index[accepted], label[accepted], cls[accepted], rate[accepted]
    # Per sample: highest rate first, then lowest class; keep the first row of each sample.
    order = np.lexsort((cls, -rate, index))
    index, label, cls = index[order], label[order], cls[order]
    first = np.ones(index.shape[0], dtype=bool)
    first[1:] = index[1:] != index[:-1]
    return FlipTable(index[first], label[first], cls[first])


@dataclass(frozen=True)
class FlipResult:
    stats: ClassStats
    moments: ClassMoments
    table: FlipTable


def compute_flips(
    probs: np.ndarray,
    labels: np.ndarray,
    indices: np.ndarray | None,
    threshold: float,
    seed: int,
    chunk_rows: int | None = None,
    threads: int | None = None,
    round: int = 1,
) -> FlipResult:
    """The whole engine on one process: statistics pass, then flips block by block.

    Args:
        probs: (N, C) averaged softmax, float16/float32 (memory-mapped is fine).
        labels: (N,) labels in [0, C).
        indices: (N,) dataset indices (default arange(N)).
        threshold: the z-score threshold t.
        seed: seed of the uniform draws.
        chunk_rows: rows per block (default: ~2 MiB float64 blocks); results do not depend on it.
        threads: threads working on blocks (default: CPU count, at most 8); results do not depend on it.
        round: the LNR round whose uniforms decide (1: the first flips; rng.stream_key).
    """
    labels = np.asarray(labels, dtype=np.int64)
    indices = np.arange(labels.shape[0], dtype=np.int64) if indices is None else np.asarray(indices, np.int64)
    chunk_rows = chunk_rows or default_chunk_rows(probs.shape[1])
    stats = accumulate_stats(probs, labels, chunk_rows, threads)
    moments = stats.moments()
    table = flips_for_rows(probs, labels, indices, moments, threshold, seed, chunk_rows, threads, round)
    return FlipResult(stats, moments, table)


def flips_for_rows(
    probs: np.ndarray,
    labels: np.ndarray,
    indices: np.ndarray,
    moments: ClassMoments,
    threshold: float,
    seed: int,
    chunk_rows: int,
    threads: int | None = None,
    round: int = 1,
) -> FlipTable:
    """Flips of some rows given GLOBAL moments (a shard's rows in the distributed job), round `round`'s draws."""

    def block(rows: slice) -> FlipTable:
        found = find_candidates(probs[rows], labels[rows], indices[rows], moments, threshold)
        return flips_from_candidates(found, moments.prior, threshold, seed, round)

    return FlipTable.concat(list(map_blocks(block, probs.shape[0], chunk_rows, threads)))


def candidates_for_rows(
    probs: np.ndarray,
    labels: np.ndarray,
    indices: np.ndarray,
    moments: ClassMoments,
    t_min: float,
    chunk_rows: int,
    threads: int | None = None,
) -> Candidates:
    """Sparse candidates of some rows, block by block, for threshold sweeps."""

    def block(rows: slice) -> Candidates:
        return find_candidates(probs[rows], labels[rows], indices[rows], moments, t_min)

    return Candidates.concat(list(map_blocks(block, probs.shape[0], chunk_rows, threads)), t_min)


def binary_flips(
    minority_prob: np.ndarray, labels: np.ndarray, indices: np.ndarray | None, threshold: float, seed: int
) -> FlipTable:
    """Binary LNR: label 0 is the majority, 1 the minority; only 0 -> 1 flips.

    Z standardises the minority probability q over the majority samples; rho = max(tanh(Z - t), 0) and a majority
    sample flips when rho > uniform(seed, index, 1). With C = 2, prior_1 - prior_0 = 1, so this is exactly the
    multi-class rule (same fixed-point statistics, same draws).

    Args:
        minority_prob: (N,) probability of class 1.
        labels: (N,) 0/1 labels; there must be at least as many 0s as 1s.
    """
    q = np.asarray(minority_prob, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    indices = np.arange(labels.shape[0], dtype=np.int64) if indices is None else np.asarray(indices, np.int64)
    majority = labels == 0
    num_majority = int(majority.sum())
    if num_majority < labels.shape[0] - num_majority:
        raise ValueError("binary LNR needs label 0 to be the majority class")
    empty = FlipTable.concat([])
    if num_majority * 2 == labels.shape[0]:  # equal classes: both priors are 0
        return empty
    mean, std, valid = mean_std_of(q[majority])
    if not valid:
        return empty
    z = (q - mean) / std
    rho = np.maximum(np.tanh(z - threshold), 0.0)
    flip = majority & (rho > uniforms(seed, indices, np.ones_like(indices)))
    flipped = np.sort(indices[flip])
    return FlipTable(flipped, np.zeros_like(flipped), np.ones_like(flipped))


def random_flips(
    labels: np.ndarray, indices: np.ndarray, prior: np.ndarray, num_flips: int, seed: int
) -> FlipTable:
    """The control LNR is compared with: `num_flips` samples chosen uniformly among those that have a rarer
    class, each moved to a class drawn uniformly among the classes rarer than its own (prior_k > prior_label).

    Args:
        labels: (N,) labels; indices: (N,) dataset indices; prior: (C,) class prior of the LNR rule.
    """
    labels = np.asarray(labels, dtype=np.int64)
    indices = np.asarray(indices, dtype=np.int64)
    rarer_count = (prior[None, :] > prior[labels][:, None]).sum(1)
    eligible = np.flatnonzero(rarer_count > 0)
    if num_flips > eligible.size:
        raise ValueError(
            f"{num_flips} random flips requested but only {eligible.size} samples have a rarer class"
        )
    rng = np.random.default_rng([seed, 0x52414E44])
    chosen = np.sort(rng.choice(eligible, size=num_flips, replace=False))
    order = np.argsort(
        -prior, kind="stable"
    )  # rarest first; the first rarer_count entries are the rarer classes
    targets = np.array([order[rng.integers(rarer_count[i])] for i in chosen], dtype=np.int64)
    sorting = np.argsort(indices[chosen], kind="stable")
    return FlipTable(indices[chosen][sorting], labels[chosen][sorting], targets[sorting])
