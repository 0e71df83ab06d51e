"""kNN, ANN and WANN (neighbours/vote.py, with neighbours/search.py's lists) against a brute-force reading of the
rules written here: Python loops over exact integer distances, Counter votes, Fraction weights. The points sit on
a small integer grid, so distances tie exactly and often, and the labels are spread over few classes, so votes tie
too: the tie rules (distance ties by index, vote ties to the smallest class) decide many rows."""

from __future__ import annotations

from collections import Counter
from fractions import Fraction

import numpy as np
import pytest

from lnr_dist.neighbours import (
    SHARE_FLOOR,
    exclude_self,
    nearest,
    reliability,
    reliability_neighbours,
    vote,
    vote_logits,
)


# ------------------------------------------------------------------------------------ the brute-force reading
def brute_order(query: np.ndarray, points: np.ndarray, leave_out: int | None = None) -> list[int]:
    """Every point's index, nearest first, a distance tie to the smaller index (integer coordinates: exact)."""
    distances = [
        int(((points[j].astype(np.int64) - query.astype(np.int64)) ** 2).sum()) for j in range(len(points))
    ]
    return sorted((j for j in range(len(points)) if j != leave_out), key=lambda j: (distances[j], j))


def brute_plurality(labels: list[int]) -> int:
    counts = Counter(labels)
    best = max(counts.values())
    return min(c for c, n in counts.items() if n == best)


def brute_weighted(labels: list[int], k_stars: list[int]) -> int:
    totals: dict[int, Fraction] = {}
    for label, k in zip(labels, k_stars, strict=True):
        totals[label] = totals.get(label, Fraction(0)) + Fraction(1, k)
    best = max(totals.values())
    return min(c for c, w in totals.items() if w == best)


def brute_k_star(points: np.ndarray, labels: np.ndarray, kmin: int, kmax: int) -> list[int]:
    found = []
    for i in range(len(points)):
        order = brute_order(points[i], points, leave_out=i)
        found.append(next((k for k in range(kmin, kmax, 2)
                           if brute_plurality([int(labels[j]) for j in order[:k]]) == labels[i]), kmax))  # fmt: skip
    return found


def brute_predictions(
    train, labels, queries, k_star, rule: str, k: int = 0
) -> tuple[list[int], list[list[float]]]:
    """(winner, shares) per query under kNN (k), ANN or WANN (k = k* of the nearest training point)."""
    winners, shares = [], []
    num_classes = int(labels.max()) + 1
    for query in queries:
        order = brute_order(query, train)
        kq = k if rule == "knn" else k_star[order[0]]
        near = [int(labels[j]) for j in order[:kq]]
        if rule == "wann":
            weights = [Fraction(1, k_star[j]) for j in order[:kq]]
            winners.append(brute_weighted(near, [k_star[j] for j in order[:kq]]))
        else:
            weights = [Fraction(1)] * kq
            winners.append(brute_plurality(near))
        total = sum(weights)
        shares.append([float(sum((w for y, w in zip(near, weights, strict=True) if y == c), Fraction(0)) / total)
                       for c in range(num_classes)])  # fmt: skip
    return winners, shares


# ---------------------------------------------------------------------------------------------- the data
def grid_set(n_train: int, n_query: int, classes: int, seed: int, side: int = 4, dims: int = 3):
    """Points on a side^dims integer grid (duplicates and distance ties everywhere), labels mostly by region so
    the reliability varies, some labels noisy."""
    rng = np.random.default_rng(seed)
    train = rng.integers(0, side, (n_train, dims)).astype(np.float32)
    queries = rng.integers(0, side, (n_query, dims)).astype(np.float32)
    labels = (train[:, 0] * classes // side).astype(np.int64)
    noisy = rng.random(n_train) < 0.3
    labels[noisy] = rng.integers(0, classes, int(noisy.sum()))
    return train, labels, queries


def our_k_star(train, labels, kmin, kmax):
    need = reliability_neighbours(kmin, kmax)
    found = nearest(train, train, need + 1)
    return reliability(labels[exclude_self(found.indices, np.arange(len(train)))], labels, kmin, kmax)


@pytest.mark.parametrize(("kmin", "kmax", "n_train"), [(3, 9, 90), (11, 51, 160), (5, 5, 40)])
def test_reliability_matches_the_brute_force(kmin, kmax, n_train):
    train, labels, _ = grid_set(n_train, 0, 3, seed=kmin)
    k_star = our_k_star(train, labels, kmin, kmax)
    assert k_star.tolist() == brute_k_star(train, labels, kmin, kmax)
    if kmin < kmax:  # the case is not degenerate: several k* values, kmax among them
        assert len(set(k_star.tolist())) >= 3 and (k_star == kmax).any()


@pytest.mark.parametrize("rule", ["knn", "ann", "wann"])
@pytest.mark.parametrize(("kmin", "kmax", "seed"), [(3, 9, 0), (3, 11, 1), (11, 51, 2)])
def test_predictions_match_the_brute_force_ties_included(rule, kmin, kmax, seed):
    train, labels, queries = grid_set(150, 120, 4, seed)
    k_star = our_k_star(train, labels, kmin, kmax)
    k = kmin if rule == "knn" else int(k_star.max())
    found = nearest(queries, train, k)
    near = labels[found.indices]
    if rule == "knn":
        cast = vote(near, k, 4)
    else:
        cast = vote(near, k_star[found.indices[:, 0]], 4, k_star[found.indices] if rule == "wann" else None)
    winners, shares = brute_predictions(train, labels, queries, k_star.tolist(), rule, k)
    assert cast.winner.tolist() == winners
    np.testing.assert_allclose(cast.shares, np.asarray(shares), rtol=1e-6, atol=1e-7)
    # ties decided rows here: a runner-up with as many votes (or as much weight) as the winner (weighted ties
    # need few neighbours to be found on a small set; test_a_weighted_tie_... makes one at any k)
    top_two = np.sort(np.asarray(shares), axis=1)[:, -2:]
    ties = int(np.isclose(top_two[:, 0], top_two[:, 1]).sum())
    assert ties >= (3 if rule != "wann" else 1 if kmax <= 11 else 0)
    logits = vote_logits(cast.shares, cast.winner)
    assert logits.dtype == np.float32 and logits.argmax(axis=1).tolist() == winners


def test_the_nearest_neighbour_lists_break_distance_ties_by_index():
    train, _, queries = grid_set(150, 60, 4, seed=3)
    found = nearest(queries, train, 20)
    assert found.indices.tolist() == [brute_order(q, train)[:20] for q in queries]
    assert (np.diff(found.distances, axis=1) == 0).mean() > 0.5  # most neighbours tie with the next one


def test_exclude_self_drops_the_row_itself_by_index_even_among_duplicates():
    # row 2 is a duplicate of rows 0 and 1: at distance 0 it comes third; row 5 is absent from its own list
    indices = np.array([[0, 1, 2, 3], [5, 6, 7, 8]])
    assert exclude_self(indices, np.array([2, 5])).tolist() == [[0, 1, 3], [6, 7, 8]]
    assert exclude_self(indices, np.array([9, 6])).tolist() == [[0, 1, 2], [5, 7, 8]]


def test_a_weighted_tie_that_floats_cannot_see_is_decided_exactly():
    # class 1's neighbours have k* 11, 15, 35 and class 0's 11, 21, 21: 1/15 + 1/35 = 2/21, an exact tie, which
    # the smaller class wins; summed in float64, class 1 comes out one ulp ahead
    assert 1 / 11 + 1 / 15 + 1 / 35 > 1 / 11 + 1 / 21 + 1 / 21
    labels, k_stars = np.array([[1, 1, 1, 0, 0, 0]]), np.array([[11, 15, 35, 11, 21, 21]])
    assert vote(labels, 6, 2, k_stars).winner.tolist() == [0]
    assert vote(labels[:, ::-1], 6, 2, k_stars[:, ::-1]).winner.tolist() == [0]
    # one more vote of class 1 ends the tie
    assert vote(
        np.array([[1, 1, 1, 0, 0, 0, 1]]), 7, 2, np.array([[11, 15, 35, 11, 21, 21, 51]])
    ).winner.tolist() == [1]


def test_vote_logits_keep_the_shares_as_softmax_and_the_winner_as_argmax():
    shares = np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]], dtype=np.float32)
    logits = vote_logits(shares, np.array([1, 2]))  # row 0: the winner is the larger of two tied classes
    assert logits.argmax(axis=1).tolist() == [1, 2]
    softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(softmax, (shares + SHARE_FLOOR) / (1 + 3 * SHARE_FLOOR), atol=1e-4)
    assert np.isfinite(logits).all()


@pytest.mark.parametrize(("kmin", "kmax"), [(12, 51), (11, 50), (13, 11), (0, 5)])
def test_crossed_or_even_k_ranges_are_refused(kmin, kmax):
    with pytest.raises(ValueError, match="odd kmin <= kmax"):
        reliability(np.zeros((2, 60), np.int64), np.zeros(2, np.int64), kmin, kmax)
