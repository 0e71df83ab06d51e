"""Per-class sufficient statistics of the averaged softmax, mergeable across shards.

For each class k, LNR standardises p_k over the samples whose label is NOT k. Those mean/std are derived from
sums over all samples minus sums over the samples labelled k, so each shard only needs per-class counts, sums and
sums of squares, and shards combine by addition (one all-reduce).

Floating-point addition is not associative: summing shards in another order changes the last bits of a float64
sum, and a last-bit change can move a flip decision. So every probability is first rounded to a fixed-point
integer with 32 fractional bits (2**-32 ~ 2.3e-10 absolute; float16 inputs are exact) and all sums are sums of
integers: block sums in float64 (exact below 2**53, so any summation order gives the same bits), totals in
int64, the sum of squares split into three limbs so that nothing overflows. Any split into shards, merged in any
order, therefore gives bit-for-bit what one pass gives; the float64 mean/std are then computed once from the
exact integers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .blocks import default_chunk_rows, map_blocks

FRACTION_BITS = 32
_SCALE = float(2**FRACTION_BITS)
_LIMB_BITS = 16
# Rows 1..9 of the packed (10, C) int64 array used for the all-reduce; row 0 holds N in column 0.
_FIELDS = (
    "label_count",
    "sum_all",
    "sq_hi_all",
    "sq_mid_all",
    "sq_lo_all",
    "sum_lab",
    "sq_hi_lab",
    "sq_mid_lab",
    "sq_lo_lab",
)


# Sums of integer-valued float64 are exact (and so independent of summation order) while below 2**53; each
# summed term is at most ~2**33 (p <= 1 + 1e-2 after validation), so blocks of at most 2**18 rows are summed in
# float64, then kept as int64.
MAX_BLOCK_ROWS = 2**18


def quantize(probs: np.ndarray) -> np.ndarray:
    """Validated probabilities (any float dtype, in [0, 1]) -> integer-valued float64, 32 fractional bits.

    Scaling by a power of two is exact, so the only rounding is rint's (round half to even).
    """
    fixed = np.multiply(probs, _SCALE, dtype=np.float64)
    return np.rint(fixed, out=fixed)


def _split_limbs(fixed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """fixed = hi * 2**16 + lo with hi <= 2**16, lo < 2**16 (exact in float64)."""
    hi = np.multiply(fixed, 2.0**-_LIMB_BITS)
    np.floor(hi, out=hi)
    lo = np.multiply(hi, float(1 << _LIMB_BITS))
    np.subtract(fixed, lo, out=lo)
    return hi, lo


def _square_limbs(fixed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column sums of hi*hi, hi*lo, lo*lo of an (R, C) block, so sum(fixed**2) = aa * 2**32 + 2ab * 2**16 + bb."""
    hi, lo = _split_limbs(fixed)
    return np.einsum("ij,ij->j", hi, hi), np.einsum("ij,ij->j", hi, lo), np.einsum("ij,ij->j", lo, lo)


def _square_sum(hi: int, mid: int, lo: int) -> int:
    return (int(hi) << (2 * _LIMB_BITS)) + (int(mid) << (_LIMB_BITS + 1)) + int(lo)


def mean_std(count: int, fixed_sum: int, fixed_square_sum: int) -> tuple[float, float, bool]:
    """Population mean, std (ddof=0) and validity from exact fixed-point sums; the only rounding is the last.

    Invalid (returned as 0, 1, False) when fewer than two values or zero spread: no z-score exists.
    """
    # n * sum(x^2) - sum(x)^2 is an exact integer >= 0; dividing by n^2 * 2**64 gives the variance.
    spread = count * fixed_square_sum - fixed_sum * fixed_sum
    if count < 2 or spread <= 0:
        return 0.0, 1.0, False
    mean = fixed_sum / (count * _SCALE)
    return mean, math.sqrt(spread / (count * count * _SCALE * _SCALE)), True


def mean_std_of(values: np.ndarray) -> tuple[float, float, bool]:
    """mean_std of a 1-D array of probabilities, through the same fixed-point sums as ClassStats."""
    fixed = quantize(np.asarray(values).reshape(-1, 1))
    if fixed.shape[0] > MAX_BLOCK_ROWS:
        raise ValueError(f"at most {MAX_BLOCK_ROWS} values")
    return mean_std(
        int(fixed.shape[0]), int(fixed.sum()), _square_sum(*(int(v[0]) for v in _square_limbs(fixed)))
    )


@dataclass(frozen=True)
class ClassMoments:
    """What the flip rule needs, derived from global statistics. All arrays are (C,).

    `valid[k]` is False where fewer than two samples are not labelled k or their p_k has zero spread: such a
    class can never receive a flip (its z-score is undefined), and its mean/std are set to 0/1 to keep NaN out.
    """

    counts: np.ndarray
    prior: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    valid: np.ndarray

    @property
    def num_classes(self) -> int:
        return int(self.counts.shape[0])


def class_prior(counts: np.ndarray) -> np.ndarray:
    """prior_c = 1 - (n_c - n_min) / (n_max - n_min): 0 for the largest class, 1 for the smallest.

    When every class has the same count nothing is rarer than anything else: all priors are 0, nothing flips.
    """
    counts = np.asarray(counts, dtype=np.int64)
    n_min, n_max = int(counts.min()), int(counts.max())
    if n_max == n_min:
        return np.zeros(counts.shape, dtype=np.float64)
    return 1.0 - (counts - n_min).astype(np.float64) / float(n_max - n_min)


def _block_sums(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Packed (10, C) int64 statistics of at most MAX_BLOCK_ROWS rows (layout of ClassStats.to_array)."""
    num_rows, num_classes = probs.shape
    fixed = quantize(probs)
    own = fixed[np.arange(num_rows), labels]
    own_hi, own_lo = _split_limbs(own)
    labelled = [
        np.bincount(labels, weights=w, minlength=num_classes)
        for w in (own, own_hi * own_hi, own_hi * own_lo, own_lo * own_lo)
    ]
    head = np.zeros(num_classes)
    head[0] = num_rows
    sums = [head, np.bincount(labels, minlength=num_classes), fixed.sum(0), *_square_limbs(fixed), *labelled]
    return np.stack(sums).astype(np.int64)


@dataclass(frozen=True)
class ClassStats:
    """Exact, mergeable per-class statistics of p_k (int64, fixed point, see module docstring).

    Fields are (C,) int64 arrays: `label_count[k]` samples labelled k; `sum_all[k]` / `sq_*_all[k]` the sum and
    square-sum limbs of p_k over all samples; `sum_lab[k]` / `sq_*_lab[k]` the same over the samples labelled k.
    """

    num_samples: int
    label_count: np.ndarray
    sum_all: np.ndarray
    sq_hi_all: np.ndarray
    sq_mid_all: np.ndarray
    sq_lo_all: np.ndarray
    sum_lab: np.ndarray
    sq_hi_lab: np.ndarray
    sq_mid_lab: np.ndarray
    sq_lo_lab: np.ndarray

    @classmethod
    def empty(cls, num_classes: int) -> ClassStats:
        zeros = [np.zeros(num_classes, dtype=np.int64) for _ in range(9)]
        return cls(0, *zeros)

    @classmethod
    def from_chunk(cls, probs: np.ndarray, labels: np.ndarray) -> ClassStats:
        """Statistics of some rows, on this thread.

        Works through blocks of default_chunk_rows(C) rows, so its float64 working arrays stay near CHUNK_BYTES
        whatever R is (one block of R rows needs several (R, C) float64 arrays: 2 GiB each for 2**18 rows at
        C = 1,000); the sums are exact, so the block size does not change them.

        Args:
            probs: (R, C) probabilities, float16/32/64.
            labels: (R,) integer labels in [0, C).
        """
        return accumulate_stats(probs, labels, default_chunk_rows(probs.shape[1]), threads=1)

    def merge(self, other: ClassStats) -> ClassStats:
        """Statistics of the union of two disjoint sample sets (exact, commutative, associative)."""
        packed = self.to_array() + other.to_array()
        return ClassStats.from_array(packed)

    def to_array(self) -> np.ndarray:
        """Pack into one (10, C) int64 array (row 0 holds N in column 0) for a single all-reduce (sum)."""
        rows = [getattr(self, name) for name in _FIELDS]
        head = np.zeros_like(self.label_count)
        head[0] = self.num_samples
        return np.stack([head, *rows])

    @classmethod
    def from_array(cls, packed: np.ndarray) -> ClassStats:
        packed = np.asarray(packed, dtype=np.int64)
        return cls(int(packed[0, 0]), *(packed[i].copy() for i in range(1, 10)))

    @property
    def num_classes(self) -> int:
        return int(self.label_count.shape[0])

    def float_sums(self) -> dict[str, np.ndarray]:
        """float64 views (count, sum, sum of squares of p_k, over all and over labelled-k samples)."""
        sq_all = [_square_sum(*v) for v in zip(self.sq_hi_all, self.sq_mid_all, self.sq_lo_all, strict=True)]
        sq_lab = [_square_sum(*v) for v in zip(self.sq_hi_lab, self.sq_mid_lab, self.sq_lo_lab, strict=True)]
        return {
            "count_all": np.full(self.num_classes, float(self.num_samples)),
            "sum_all": self.sum_all / _SCALE,
            "sumsq_all": np.array(sq_all, dtype=np.float64) / _SCALE**2,
            "count_lab": self.label_count.astype(np.float64),
            "sum_lab": self.sum_lab / _SCALE,
            "sumsq_lab": np.array(sq_lab, dtype=np.float64) / _SCALE**2,
        }

    def moments(self) -> ClassMoments:
        """Mean/std of p_k over samples not labelled k, the prior and a validity mask (see ClassMoments)."""
        num_classes = self.num_classes
        mean = np.zeros(num_classes)
        std = np.ones(num_classes)
        valid = np.zeros(num_classes, dtype=bool)
        for k in range(num_classes):
            square_sum = _square_sum(self.sq_hi_all[k], self.sq_mid_all[k], self.sq_lo_all[k]) - _square_sum(
                self.sq_hi_lab[k], self.sq_mid_lab[k], self.sq_lo_lab[k]
            )
            mean[k], std[k], valid[k] = mean_std(
                self.num_samples - int(self.label_count[k]),
                int(self.sum_all[k]) - int(self.sum_lab[k]),
                square_sum,
            )
        return ClassMoments(self.label_count.copy(), class_prior(self.label_count), mean, std, valid)


def accumulate_stats(
    probs: np.ndarray, labels: np.ndarray, chunk_rows: int, threads: int | None = None
) -> ClassStats:
    """One pass over (N, C) `probs` in blocks of `chunk_rows` rows (works on memory-mapped arrays)."""
    step = max(1, min(chunk_rows, MAX_BLOCK_ROWS))

    def block(rows: slice) -> np.ndarray:
        return _block_sums(probs[rows], np.asarray(labels[rows], dtype=np.int64))

    packed = np.zeros((len(_FIELDS) + 1, probs.shape[1]), dtype=np.int64)
    for sums in map_blocks(block, probs.shape[0], step, threads):
        packed += sums
    return ClassStats.from_array(packed)
