"""Counter-based uniforms: one draw per (seed, sample index, class).

LNR draws one uniform per candidate (sample, class). The reference draws them from NumPy's global stream in
sample order, so the decision for a sample depends on which samples came before it, on the batch size and on the
worker layout. Here the draw is a hash of its coordinates, so it is the same on any shard, chunk or order.

The hash chains the SplitMix64 finaliser (Steele, Lea & Flood, "Fast splittable pseudorandom number generators",
OOPSLA 2014), a bijection of 64-bit integers with full avalanche; 53 bits of the result make a float64 in [0, 1).
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)
_TO_UNIT = 2.0**-53


def _finalize(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (wrap-around arithmetic is intended)."""
    x = (x ^ (x >> np.uint64(30))) * _MUL1
    x = (x ^ (x >> np.uint64(27))) * _MUL2
    return x ^ (x >> np.uint64(31))


def uniforms(seed: int, index: np.ndarray, cls: np.ndarray) -> np.ndarray:
    """Uniform draws in [0, 1) keyed by (seed, index, class).

    Args:
        seed: integer in [0, 2**63).
        index: (M,) non-negative sample indices (dataset positions).
        cls: (M,) class indices, broadcastable against `index`.

    Returns:
        (M,) float64 array; entry m depends only on (seed, index[m], cls[m]).
    """
    if not 0 <= int(seed) < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed}")
    with np.errstate(over="ignore"):
        key = _finalize(np.asarray([seed], dtype=np.uint64) + _GOLDEN)
        per_sample = _finalize(key + np.asarray(index, dtype=np.int64).astype(np.uint64))
        per_class = np.asarray(cls, dtype=np.int64).astype(np.uint64) * _GOLDEN + _GOLDEN
        bits = _finalize(per_sample ^ per_class)
    return (bits >> np.uint64(11)).astype(np.float64) * _TO_UNIT
