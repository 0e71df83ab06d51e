"""kNN, ANN and WANN votes on neighbour lists (Di Salvo et al., "An Embedding is Worth a Thousand Noisy Labels",
TMLR 2025; reference code github.com/francescodisalvo05/wann-noisy-labels, src/model/{KNN,ANN,WANN}.py).

- Reliability (the paper's eq. 1, the reference's `find_k`): a training sample's k* is the smallest odd k in
  [kmin, kmax) whose k nearest training neighbours, the sample itself left out by dataset index, vote for the
  sample's own label; kmax when none does. Its reliability score is 1 / k*.
- kNN: a vote of the k nearest training neighbours (fixed k).
- ANN: a query takes k_q = k* of its nearest training neighbour and its k_q nearest neighbours vote, one vote each.
- WANN: the same k_q neighbours, each vote weighted by that neighbour's reliability 1 / k*.

Tie rules, so results are exact and repeatable: neighbour lists come ordered by (distance, index)
(neighbours/search.py); a vote goes to the class with the most votes (WANN: the largest sum of 1 / k*, compared
exactly, as fractions, where float64 sums come within 1e-9 of each other), a tie to the smallest class. The
reference breaks a count tie the same way (np.unique + argmax) but a weighted tie toward the class met first.

A vote here is a plurality: with k >= 11 neighbours, a class with fewer than 6 training images never holds a
majority (6 of 11) of a vote, and wins only when the other neighbours split among several classes (and for its
own samples' k*, at most n_c - 1 of the neighbours can share their label, the sample itself being left out).

Scores: each vote also gives vote shares s (n, C) (counts, or weights, over their total: a distribution over the
classes). `vote_logits` turns them into logits log(s + 1e-6), so that softmax(logits) = (s + 1e-6) / (1 + C 1e-6)
~ s: accuracy, ECE and NLL are those of the vote shares (the 1e-6 floor keeps the NLL of a class without votes
finite), and temperature scaling on validation fits softmax(log(s + 1e-6) / T), a power of the shares.
"""

from __future__ import annotations

from fractions import Fraction
from typing import NamedTuple

import numpy as np

SHARE_FLOOR = 1e-6
# WANN sums within this relative distance of the best are compared exactly (a float64 sum of K terms is off by
# at most ~K * 2^-53 relative, far below)
_NEAR_TIE = 1e-9
# a winner whose float32 logit does not come out on top (two sums that float32 cannot tell apart) is put this far
# above the runner-up, so argmax(logits), also after dividing by a temperature in [0.05, 20], is the exact decision
_LOGIT_MARGIN = 1e-4
_BLOCK_CELLS = 2**25  # rows x K x K booleans of the first-occurrence slots per block (32 MiB)


class Vote(NamedTuple):
    """winner (n,) int64: the voted class; shares (n, C) float32: each class's share of the votes (rows sum to 1)."""

    winner: np.ndarray
    shares: np.ndarray


def exclude_self(indices: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Neighbour lists of index rows searched against their own index, the row itself left out by its index:
    indices (n, K + 1) int64 ordered by (distance, index), rows (n,) the dataset index of each query -> (n, K).
    A query absent from its K + 1 (more than K points at distance 0 before it) loses the last entry instead."""
    indices, rows = np.asarray(indices), np.asarray(rows)
    is_self = indices == rows[:, None]
    # drop the first occurrence of the row itself, or else the last column
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), indices.shape[1] - 1)
    keep = np.arange(indices.shape[1])[None, :] != drop[:, None]
    return indices[keep].reshape(indices.shape[0], indices.shape[1] - 1)


def check_k_range(kmin: int, kmax: int) -> None:
    """kmin and kmax odd, 1 <= kmin <= kmax (the reference searches range(kmin, kmax, 2)). Raises ValueError."""
    if kmin < 1 or kmin > kmax or kmin % 2 == 0 or kmax % 2 == 0:
        raise ValueError(f"need odd kmin <= kmax, kmin >= 1; got kmin {kmin}, kmax {kmax}")


def reliability_neighbours(kmin: int, kmax: int) -> int:
    """How many neighbours (the sample left out) the reliability needs: the largest odd k tried, kmax - 2 (0 when
    kmin == kmax: every k* is kmax)."""
    check_k_range(kmin, kmax)
    return kmax - 2 if kmin < kmax else 0


def _block_rows(width: int) -> int:
    return max(1, _BLOCK_CELLS // max(1, width * width))


def _first_slots(labels: np.ndarray) -> np.ndarray:
    """For each position j of each row, the first position holding the same label. (m, K) -> (m, K) int64."""
    return (labels[:, :, None] == labels[:, None, :]).argmax(axis=2)


def reliability(neighbour_labels: np.ndarray, labels: np.ndarray, kmin: int, kmax: int) -> np.ndarray:
    """k* of each training sample (module docstring). neighbour_labels (N, K) int64: the labels of its
    neighbours, itself left out, nearest first, K >= reliability_neighbours(kmin, kmax); labels (N,) int64 ->
    (N,) int64 in {kmin, kmin + 2, ..., kmax}. Raises ValueError for even or crossed kmin / kmax, or too few
    neighbours."""
    need = reliability_neighbours(kmin, kmax)
    neighbour_labels, labels = np.asarray(neighbour_labels, np.int64), np.asarray(labels, np.int64)
    if (
        neighbour_labels.ndim != 2
        or neighbour_labels.shape[1] < need
        or labels.shape != neighbour_labels.shape[:1]
    ):
        raise ValueError(f"need (N, >= {need}) neighbour labels and (N,) labels, got {neighbour_labels.shape} and "
                         f"{labels.shape}")  # fmt: skip
    k_star = np.full(labels.shape[0], kmax, dtype=np.int64)
    tried = list(range(kmin, kmax, 2))
    if not tried:
        return k_star
    step = _block_rows(need)
    for start in range(0, labels.shape[0], step):
        nl, y = neighbour_labels[start : start + step, :need], labels[start : start + step]
        m = y.shape[0]
        slots = _first_slots(nl)
        first = slots == np.arange(need)[None, :]
        below, above = first & (nl < y[:, None]), first & (nl > y[:, None])
        own = np.cumsum(nl == y[:, None], axis=1)
        counts, rows, undecided, done = np.zeros((m, need), np.int64), np.arange(m), np.ones(m, bool), 0
        for k in tried:
            for j in range(done, k):
                counts[rows, slots[:, j]] += 1
            done = k
            own_votes = own[:, k - 1]
            # the own label wins a tie only against larger classes (ties go to the smallest class)
            wins = (own_votes > np.where(below, counts, 0).max(axis=1)) & (
                own_votes >= np.where(above, counts, 0).max(axis=1)
            )
            k_star[start + np.flatnonzero(undecided & wins)] = k
            undecided &= ~wins
            if not undecided.any():
                break
    return k_star


def vote(
    neighbour_labels: np.ndarray, k: np.ndarray | int, num_classes: int, neighbour_k: np.ndarray | None = None
) -> Vote:
    """The vote of each query's first k neighbours (module docstring). neighbour_labels (n, K) int64 in [0, C),
    nearest first; k: int or (n,) int64 in [1, K] (ANN / WANN: k_q per query); neighbour_k (n, K) int64: the
    neighbours' k* (WANN: each vote weighs 1 / k*; None: one each). Returns Vote(winner (n,), shares (n, C))."""
    neighbour_labels = np.asarray(neighbour_labels, np.int64)
    n, width = neighbour_labels.shape
    k = np.broadcast_to(np.asarray(k, np.int64), (n,))
    if n and (k.min() < 1 or k.max() > width):
        raise ValueError(
            f"k must lie in [1, {width}] (the neighbours given), got {int(k.min())}..{int(k.max())}"
        )
    if n and (neighbour_labels.min() < 0 or neighbour_labels.max() >= num_classes):
        raise ValueError(f"neighbour labels must lie in [0, {num_classes})")
    winner, shares = np.empty(n, np.int64), np.zeros((n, num_classes), np.float32)
    step = _block_rows(width)
    for start in range(0, n, step):
        stop = min(n, start + step)
        nl, kq = neighbour_labels[start:stop], k[start:stop]
        m, rows = stop - start, np.arange(stop - start)
        active = np.arange(width)[None, :] < kq[:, None]
        weights = active / neighbour_k[start:stop] if neighbour_k is not None else active.astype(np.float64)
        slots = _first_slots(nl)
        sums = np.zeros((m, width), np.float64)
        for j in range(width):  # summed in neighbour order, one position at a time
            sums[rows, slots[:, j]] += weights[:, j]
        first = slots == np.arange(width)[None, :]
        best = np.where(first, sums, -1.0).max(axis=1)
        tolerance = _NEAR_TIE * best if neighbour_k is not None else 0.0  # counts are exact integers
        contenders = first & (sums > 0) & (sums >= (best - tolerance)[:, None])
        won = np.where(contenders, nl, num_classes).min(axis=1)
        if neighbour_k is not None:
            for row in np.flatnonzero(contenders.sum(axis=1) > 1):
                won[row] = _exact_weighted_winner(
                    nl[row], neighbour_k[start + row], int(kq[row]), contenders[row]
                )
        winner[start:stop] = won
        block = np.zeros((m, num_classes), np.float64)
        r, s = np.nonzero(first)
        block[r, nl[r, s]] = sums[r, s]
        shares[start:stop] = block / block.sum(axis=1, keepdims=True)
    return Vote(winner, shares)


def _exact_weighted_winner(labels: np.ndarray, k_star: np.ndarray, k: int, contenders: np.ndarray) -> int:
    """Among the contending classes of one query, the largest sum of 1 / k* as exact fractions; a tie to the
    smallest class. labels, k_star: (K,); contenders (K,) bool at first-occurrence slots."""
    classes = sorted(int(c) for c in labels[contenders])
    totals = {c: sum((Fraction(1, int(kk)) for y, kk in zip(labels[:k], k_star[:k], strict=True) if y == c),
                     Fraction(0)) for c in classes}  # fmt: skip
    best = max(totals.values())
    return min(c for c in classes if totals[c] == best)


def vote_logits(shares: np.ndarray, winner: np.ndarray) -> np.ndarray:
    """Logits log(s + SHARE_FLOOR) (n, C) float32 of vote shares s (n, C) (module docstring), whose argmax is
    `winner` (n,) exactly: where float32 ties the winner with (or puts it below) another class, the winner's logit
    is set _LOGIT_MARGIN above the best other."""
    logits = np.log(np.asarray(shares, np.float64) + SHARE_FLOOR).astype(np.float32)
    rows = np.flatnonzero(logits.argmax(axis=1) != winner)
    if rows.size:
        others = logits[rows].copy()
        others[np.arange(rows.size), winner[rows]] = -np.inf
        logits[rows, winner[rows]] = others.max(axis=1) + np.float32(_LOGIT_MARGIN)
    return logits
