"""Counter-based uniforms: one draw per (seed, round, sample index, class).

LNR draws one uniform per candidate (sample, class). The reference draws them from NumPy's global stream in
sample order, so the decision for a sample depends on which samples came before it, on the batch size and on the
worker layout. Here the draw is a hash of its coordinates, so it is the same on any shard, chunk or order.

The hash chains the SplitMix64 finaliser (Steele, Lea & Flood, "Fast splittable pseudorandom number generators",
OOPSLA 2014), a bijection of 64-bit integers with full avalanche; 53 bits of the result make a float64 in [0, 1).

Iterated LNR flips again in rounds 2, 3, ...; each round draws from its own stream, keyed by `stream_key(seed,
round)`. Round 1 is the original key (seed + golden ratio, finalised), so round 1's draws are the ones LNR always
drew. Rounds >= 2 take their pre-images from the other half of the 64-bit circle (see `stream_key`), so no
(seed, round) pair shares a key with another: since the finaliser is a bijection, distinct pre-images give
distinct keys, and no round's draws are another seed's.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)
_TO_UNIT = 2.0**-53
# Rounds >= 2: pre-image golden + 2**63 + (round - 2) * 2**ROUND_SEED_BITS + seed, seed < 2**ROUND_SEED_BITS
ROUND_SEED_BITS = 48
MAX_ROUND = 2 ** (63 - ROUND_SEED_BITS) + 1


def _finalize(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (wrap-around arithmetic is intended)."""
    x = (x ^ (x >> np.uint64(30))) * _MUL1
    x = (x ^ (x >> np.uint64(27))) * _MUL2
    return x ^ (x >> np.uint64(31))


def stream_key(seed: int, round: int = 1) -> np.ndarray:
    """The (1,) uint64 key of the draws of `seed` in LNR round `round` (1 = the first flips).

    Pre-images: round 1 takes golden + seed, seed in [0, 2**63): one half of the 64-bit circle (mod 2**64).
    Round r >= 2 takes golden + 2**63 + (r - 2) * 2**48 + seed, seed in [0, 2**48) and r <= MAX_ROUND, so the
    offset past golden + 2**63 lies in [0, 2**63): the other half, and (r - 2, seed) are its base-2**48 digits.
    Distinct (seed, round) pairs therefore have distinct pre-images, and the finaliser, a bijection, keeps them
    distinct. Raises ValueError for a seed or round outside those ranges.
    """
    if isinstance(round, bool) or not 1 <= int(round) <= MAX_ROUND:
        raise ValueError(f"round must be an integer in [1, {MAX_ROUND}], got {round}")
    if not 0 <= int(seed) < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed}")
    if round == 1:
        pre = np.asarray([seed], dtype=np.uint64)
    else:
        if int(seed) >= 2**ROUND_SEED_BITS:
            raise ValueError(f"seed must be below 2**{ROUND_SEED_BITS} for LNR rounds >= 2, got {seed}")
        pre = np.asarray([2**63 + ((int(round) - 2) << ROUND_SEED_BITS) + int(seed)], dtype=np.uint64)
    with np.errstate(over="ignore"):
        return _finalize(pre + _GOLDEN)


def uniforms(seed: int, index: np.ndarray, cls: np.ndarray, round: int = 1) -> np.ndarray:
    """Uniform draws in [0, 1) keyed by (seed, round, index, class).

    Args:
        seed: integer in [0, 2**63) (below 2**48 for round >= 2).
        index: (M,) non-negative sample indices (dataset positions).
        cls: (M,) class indices, broadcastable against `index`.
        round: the LNR round, 1 (the first flips; the draws LNR always made) to MAX_ROUND.

    Returns:
        (M,) float64 array; entry m depends only on (seed, round, index[m], cls[m]).
    Raises:
        ValueError: seed or round out of range (stream_key).
    """
    key = stream_key(seed, round)
    with np.errstate(over="ignore"):
        per_sample = _finalize(key + np.asarray(index, dtype=np.int64).astype(np.uint64))
        per_class = np.asarray(cls, dtype=np.int64).astype(np.uint64) * _GOLDEN + _GOLDEN
        bits = _finalize(per_sample ^ per_class)
    return (bits >> np.uint64(11)).astype(np.float64) * _TO_UNIT
