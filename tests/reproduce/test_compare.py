"""The paired bootstrap behind comparisons.csv: deltas equal the table's differences, intervals are seeded,
bracket the delta, shrink with more test images, and verdicts follow the interval."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lnr_dist.data.manifest import Manifest
from lnr_dist.reproduce import compare
from lnr_dist.reproduce.compare import NOISE, SampleScores, paired_bootstrap, verdict
from lnr_dist.train.calibration import metrics_at

# 12 classes: 3 many (> 100), 5 medium, 4 few (< 20) training images
TRAIN_COUNTS = [300, 200, 150, 90, 60, 40, 30, 25, 15, 10, 6, 3]
MANIFEST = Manifest.from_labels(np.repeat(np.arange(12), TRAIN_COUNTS), 12)


def logits_for(labels: np.ndarray, skill: float, seed: int) -> np.ndarray:
    """Random logits whose true class gets `skill` extra: higher skill, higher accuracy."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (labels.size, 12)).astype(np.float32)
    logits[np.arange(labels.size), labels] += skill
    return logits


def scores(labels, skill, seed, shuffle=None):
    logits, indices = logits_for(labels, skill, seed), np.arange(labels.size)
    if shuffle is not None:  # rows in another order (e.g. rank order): pairing goes by dataset index
        order = np.random.default_rng(shuffle).permutation(labels.size)
        logits, labels, indices = logits[order], labels[order], indices[order]
    return SampleScores.from_logits(logits, labels, indices)


LABELS = np.repeat(np.arange(12), 25)  # a balanced test split, 25 per class


def table_metrics(labels, skill, seed):
    out = metrics_at(torch.from_numpy(logits_for(labels, skill, seed)), torch.from_numpy(labels), MANIFEST)
    return {m: out[m] for m in compare.METRICS}


def test_delta_is_the_difference_of_the_table_numbers():
    result = paired_bootstrap(
        [scores(LABELS, 2.0, 1, shuffle=5)], [scores(LABELS, 1.0, 2)], MANIFEST, draws=200
    )
    a, b = table_metrics(LABELS, 2.0, 1), table_metrics(LABELS, 1.0, 2)
    for metric in compare.METRICS:
        assert result[metric]["delta"] == pytest.approx(a[metric] - b[metric], abs=1e-9)
        assert result[metric]["seeds"] == 1


def test_interval_brackets_delta_is_seeded_and_shrinks_with_a_duplicated_test_set():
    method, baseline = [scores(LABELS, 1.6, 1)], [scores(LABELS, 1.3, 2)]
    first = paired_bootstrap(method, baseline, MANIFEST, draws=400, seed=3)
    assert first == paired_bootstrap(method, baseline, MANIFEST, draws=400, seed=3)
    assert first != paired_bootstrap(method, baseline, MANIFEST, draws=400, seed=4)
    twice = np.concatenate([LABELS, LABELS])

    def doubled(skill, seed):
        logits = np.concatenate([logits_for(LABELS, skill, seed)] * 2)
        return SampleScores.from_logits(logits, twice, np.arange(twice.size))

    bigger = paired_bootstrap([doubled(1.6, 1)], [doubled(1.3, 2)], MANIFEST, draws=400, seed=3)
    for metric in compare.METRICS:
        r, d = first[metric], bigger[metric]
        assert r["ci_low"] <= r["delta"] <= r["ci_high"], metric
        assert d["delta"] == pytest.approx(r["delta"], abs=1e-9)  # the same numbers, twice the images
        assert d["ci_high"] - d["ci_low"] < r["ci_high"] - r["ci_low"], metric


def test_verdicts_follow_the_interval():
    clear = paired_bootstrap([scores(LABELS, 4.0, 1)], [scores(LABELS, 0.0, 2)], MANIFEST, draws=300)
    assert (
        clear["top1"]["ci_low"] > 0
        and verdict("top1", clear["top1"]["ci_low"], clear["top1"]["ci_high"]) == "better"
    )
    same = paired_bootstrap([scores(LABELS, 1.0, 1)], [scores(LABELS, 1.0, 1)], MANIFEST, draws=100)
    assert (
        same["few"]["delta"] == 0 and verdict("few", same["few"]["ci_low"], same["few"]["ci_high"]) == NOISE
    )
    assert verdict("top1", -3.0, -1.0) == "worse" and verdict("top1", -1.0, 2.0) == NOISE
    assert (
        verdict("ece", -3.0, -1.0) == "better" and verdict("ece", 1.0, 2.0) == "worse"
    )  # lower ECE is better
    assert verdict("many", None, None) == ""


def test_several_seeds_average_and_resample_the_seeds():
    method = [scores(LABELS, 1.5, s) for s in (1, 2, 3)]
    baseline = [scores(LABELS, 1.0, s) for s in (11, 12, 13)]
    result = paired_bootstrap(method, baseline, MANIFEST, draws=300)
    expected = np.mean([table_metrics(LABELS, 1.5, s)["top1"] - table_metrics(LABELS, 1.0, s + 10)["top1"]
                        for s in (1, 2, 3)])  # fmt: skip
    assert result["top1"]["delta"] == pytest.approx(expected, abs=1e-9) and result["top1"]["seeds"] == 3
    one_seed = paired_bootstrap(method[:1], baseline[:1], MANIFEST, draws=300)
    assert result["top1"]["ci_low"] != one_seed["top1"]["ci_low"]


def test_a_group_without_classes_gives_empty_cells_and_other_test_images_are_refused():
    few_only = Manifest.from_labels(np.repeat(np.arange(12), 5), 12)  # every class is few-shot
    result = paired_bootstrap([scores(LABELS, 2.0, 1)], [scores(LABELS, 1.0, 2)], few_only, draws=50)
    assert result["many"] == {"delta": None, "ci_low": None, "ci_high": None, "seeds": 1}
    assert result["few"]["delta"] is not None
    other = SampleScores.from_logits(logits_for(LABELS, 1.0, 2), LABELS, np.arange(LABELS.size) + 1)
    with pytest.raises(ValueError, match="different test images"):
        paired_bootstrap([scores(LABELS, 2.0, 1)], [other], MANIFEST, draws=10)


def test_pairs_and_rows_use_exactly_the_csv_columns():
    assert compare.pairs(("ce", "mislas", "lnr", "random"), ("mislas", "random", "ce")) == [
        ("lnr", "mislas"), ("lnr", "random"), ("lnr", "ce")
    ]  # fmt: skip
    table = {"lnr": [scores(LABELS, 2.0, 1)], "mislas": [scores(LABELS, 1.0, 2)], "random": [None]}
    rows = compare.compare(table, MANIFEST, ("mislas", "lnr", "random"), ("mislas", "random"), [0], 50, 0)
    assert [(r["method"], r["baseline"]) for r in rows] == [("lnr", "mislas")] * len(compare.METRICS)
    assert all(tuple(r) == compare.FIELDS for r in rows)
