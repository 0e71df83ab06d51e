"""The report's figures at 1,000 classes, and the pure binning behind them (sums kept exactly)."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lnr_dist.core.synthetic import exponential_counts
from lnr_dist.data.manifest import GROUPS, Manifest
from lnr_dist.lnr import FlipTable
from lnr_dist.reproduce.figures import (
    binned_accuracy,
    binned_flips,
    frequency_bins,
    reliability,
    reliability_sums,
    write_figures,
)
from tests.reproduce.conftest import synthetic_run


def manifest_of(counts: np.ndarray) -> Manifest:
    return Manifest.from_labels(np.repeat(np.arange(counts.size), counts), counts.size)


def random_table(counts: np.ndarray, size: int, seed: int) -> FlipTable:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(counts.size), counts)
    index = np.sort(rng.choice(labels.size, size, replace=False))
    return FlipTable(index, labels[index], rng.integers(0, counts.size, size))


def test_frequency_bins_run_head_to_tail_and_never_mix_groups():
    counts = np.random.default_rng(0).permutation(exponential_counts(1000, 1280, 5))  # class index != rank
    manifest = manifest_of(counts)
    bins = frequency_bins(counts, manifest.group, 20)
    assert len(bins) == 20
    order = np.concatenate(bins)
    assert sorted(order.tolist()) == list(range(1000))  # every class exactly once
    assert np.all(np.diff(counts[order]) <= 0)  # head to tail
    for name in GROUPS:
        sizes = [b.size for b in bins if manifest.group[b[0]] == GROUPS.index(name)]
        assert all(np.unique(manifest.group[b]).size == 1 for b in bins)
        assert sum(sizes) == manifest.group_classes(name).size and max(sizes) - min(sizes) <= 1


def test_few_classes_get_one_bin_each_and_too_few_bins_are_refused():
    counts = exponential_counts(10, 500, 5)
    bins = frequency_bins(counts, manifest_of(counts).group, 20)
    assert [b.tolist() for b in bins] == [[k] for k in range(10)]
    with pytest.raises(ValueError, match="max_bins must be >= 3"):
        frequency_bins(counts, manifest_of(counts).group, 2)


def test_binned_flips_keeps_every_flip_exactly():
    counts = exponential_counts(60, 1280, 5)
    manifest = manifest_of(counts)
    table = random_table(counts, 3000, seed=1)
    dense = table.flip_matrix(60)
    bins = frequency_bins(counts, manifest.group, 8)
    binned = binned_flips(table, bins, 60)
    assert binned.dtype == np.int64 and binned.sum() == len(table) == dense.sum()
    for a, rows in enumerate(bins):
        for b, cols in enumerate(bins):
            assert binned[a, b] == dense[np.ix_(rows, cols)].sum()
    groups = binned_flips(table, [manifest.group_classes(g) for g in GROUPS], 60)
    assert groups.shape == (3, 3) and groups.sum() == len(table)
    assert groups.sum(1).tolist() == np.bincount(manifest.group[table.source], minlength=3).tolist()
    assert groups.sum(0).tolist() == np.bincount(manifest.group[table.target], minlength=3).tolist()


def test_binned_flips_refuses_bins_that_do_not_partition_the_classes():
    table = random_table(np.array([5, 4, 3]), 4, seed=2)
    with pytest.raises(ValueError, match="leave out classes"):
        binned_flips(table, [np.array([0]), np.array([1])], 3)
    with pytest.raises(ValueError, match="overlap"):
        binned_flips(table, [np.array([0, 1]), np.array([1, 2])], 3)


def test_binned_accuracy_ignores_classes_absent_from_test():
    acc = np.array([[100.0, np.nan, 50.0, np.nan], [0.0, 20.0, np.nan, np.nan]])
    means = binned_accuracy(acc, [np.array([0, 1]), np.array([2, 3])])
    assert means[0].tolist() == [100.0, 50.0]
    assert means[1, 0] == 10.0 and np.isnan(means[1, 1])


def test_pooled_reliability_equals_one_pass_over_all_rows():
    rng = np.random.default_rng(3)
    parts = [(rng.normal(0, 2, (n, 7)).astype(np.float32), rng.integers(0, 7, n)) for n in (5000, 300)]
    pooled = reliability_sums(parts)  # in row chunks, as the figure does
    _, _, _, ece = reliability(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    assert pooled.bin_count.sum() == 5300
    assert 100 * np.abs(pooled.bin_correct - pooled.bin_confidence).sum() / 5300 == pytest.approx(
        ece, abs=1e-9
    )


def assert_picture(path: Path) -> None:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
        pixels = np.asarray(image.convert("L"), dtype=np.float32)
    assert 400 <= width <= 2500 and 300 <= height <= 1500, (path.name, width, height)
    assert pixels.std() > 5, path.name  # not a blank canvas


def test_a_1000_class_report_renders_its_figures(tmp_path):
    cfg, outcomes = synthetic_run(
        tmp_path / "run", num_classes=1000, seeds=2, logits_methods=("mislas", "lnr")
    )
    written = write_figures(cfg, outcomes, {})
    names = {p.name for p in written}
    assert names == {"reliability_mislas.png", "reliability_lnr.png", "per_class_accuracy.png", "flip_matrix.png",
                     "threshold_sweep.png", "stage1_curves.png"}  # fmt: skip
    for path in written:
        assert path.parent == tmp_path / "run" / "figures"
        assert_picture(path)


def test_a_1000_class_report_writes_tables_comparisons_and_figures(tmp_path):
    from lnr_dist.reproduce.report import write_report

    methods = ("ce", "mislas", "lnr", "random")
    cfg, outcomes = synthetic_run(tmp_path / "run", num_classes=1000, seeds=2, methods=methods)
    cfg = replace(cfg, reproduce=replace(cfg.reproduce, bootstrap=200))
    report = write_report(cfg, outcomes)
    root = tmp_path / "run"
    with (root / "comparisons.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["method"], r["baseline"]) for r in rows} == {
        ("lnr", "mislas"),
        ("lnr", "random"),
        ("lnr", "ce"),
    }
    assert all(r["seeds"] == "2" and float(r["ci_low"]) <= float(r["ci_high"]) for r in rows)
    few = next(r for r in rows if (r["method"], r["baseline"], r["metric"]) == ("lnr", "ce", "few"))
    assert few["verdict"] == "better"  # +31 points in the tail (EFFECTS), on 2 seeds x ~500 few-shot images
    text = (root / "results.md").read_text()
    assert len(rows) == 15 and "15 comparisons" in text and " ± " in text  # two seeds: mean ± std
    assert len(report["figures"]) == 8
    for path in report["figures"]:
        assert_picture(Path(path))


def test_the_sweep_figure_does_without_a_chosen_threshold(tmp_path):
    cfg, outcomes = synthetic_run(tmp_path / "run", num_classes=30, seeds=2, methods=("mislas",))
    (outcomes[1].folder / "tune" / "chosen_threshold.json").unlink()
    written = {p.name: p for p in write_figures(cfg, outcomes, {})}
    assert_picture(written["threshold_sweep.png"])
