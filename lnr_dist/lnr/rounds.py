"""Iterated LNR: round r flips again, from the predictions of round r-1's stage-2 model, the labels as round r-1
left them (issue 17, item 4: "recomputes statistics on the current labels and flips again").

Round r's statistics (mean/std of p_k over samples not labelled k), prior (from the class counts) and candidates
all use those current labels, and its uniforms come from round r's own stream (rng.stream_key), so round 1 is
the first flips exactly and no round repeats another's (or another seed's) draws. A round's table maps round r-1's
labels to round r's; `cumulative` composes them into the one table stage 2 of round r trains on (from the
dataset's labels).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .flips import Candidates, FlipResult, candidates_for_rows, compute_flips, default_chunk_rows
from .stats import ClassMoments, accumulate_stats
from .table import FlipTable


def labels_after(labels: np.ndarray, tables: Sequence[FlipTable]) -> np.ndarray:
    """(N,) labels (row i = dataset index i) -> (N,) int64 labels after applying `tables` in turn.

    Raises ValueError (FlipTable.apply) when a table's 'from' does not match the labels it meets.
    """
    current = np.asarray(labels, dtype=np.int64).copy()
    indices = np.arange(current.shape[0], dtype=np.int64)
    for table in tables:
        current = table.apply(indices, current)
    return current


def cumulative(tables: Sequence[FlipTable]) -> FlipTable:
    """Rounds 1..r's tables as one table from the dataset's labels to round r's (FlipTable.then in turn)."""
    total = FlipTable.concat([])
    for table in tables:
        total = total.then(table)
    return total


def next_round(
    probs: np.ndarray,
    labels: np.ndarray,
    previous: Sequence[FlipTable],
    threshold: float,
    seed: int,
    chunk_rows: int | None = None,
    threads: int | None = None,
) -> FlipResult:
    """Round r = len(previous) + 1 of LNR on one process.

    Args:
        probs: (N, C) averaged softmax of round r-1's model (the stage-1 model's for round 1), row i = index i.
        labels: (N,) the dataset's labels (int).
        previous: rounds 1..r-1's tables, in order.
        threshold: round r's z-score threshold; seed: the flip seed (below 2**48 when r >= 2).
    Returns:
        FlipResult whose stats/moments are those of the labels after `previous` and whose table maps those labels
        to round r's. With no previous round it is compute_flips(probs, labels, None, threshold, seed) exactly.
    """
    current = labels_after(labels, previous)
    return compute_flips(probs, current, None, threshold, seed, chunk_rows, threads, round=len(previous) + 1)


def round_candidates(
    probs: np.ndarray,
    labels: np.ndarray,
    previous: Sequence[FlipTable],
    t_min: float,
    chunk_rows: int | None = None,
    threads: int | None = None,
) -> tuple[Candidates, ClassMoments]:
    """Round r = len(previous) + 1's candidates at t_min and its moments (on the labels after `previous`), for
    re-tuning the round's threshold: flips_from_candidates(candidates, moments.prior, t, seed, r) equals
    next_round(probs, labels, previous, t, seed).table bit for bit at any t >= t_min (the engine's rule).

    Args/shapes as next_round; t_min: the lowest threshold to be tried.
    """
    current = labels_after(labels, previous)
    chunk_rows = chunk_rows or default_chunk_rows(probs.shape[1])
    moments = accumulate_stats(probs, current, chunk_rows, threads).moments()
    indices = np.arange(current.shape[0], dtype=np.int64)
    return candidates_for_rows(probs, current, indices, moments, t_min, chunk_rows, threads), moments
