"""The nearest-neighbour methods and the linear probe (stage2/neighbours.py: knn, ann, wann, wann_lnr,
linear_probe) through the features backend (run_on_features), the CLI and reproduce, on a synthetic run folder
of cached features (no image, no Ray), and their bad-input lines."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lnr_dist.cli import main
from lnr_dist.core import config as config_lib
from lnr_dist.core import storage
from lnr_dist.core.config import ConfigError, load_config
from lnr_dist.core.errors import UserError
from lnr_dist.data.config import DataConfig
from lnr_dist.experiment import ExperimentConfig, NeighboursConfig, Stage2Config
from lnr_dist.features.backend import run_on_features
from lnr_dist.features.cache import head_inputs
from lnr_dist.features.heads import fresh_head_fitter
from lnr_dist.reproduce.methods import steps_of, sweep_method
from lnr_dist.stage2 import neighbours
from lnr_dist.stage2.flip_sources import FlipSource
from lnr_dist.stage2.registry import get_method

REPO = Path(__file__).resolve().parents[2]
C, D = 4, 8
TRAIN_COUNTS = (80, 40, 20, 5)  # class 3: fewer than 6 training images
EVAL_PER_CLASS = 12
THRESHOLD = 1.0
METHODS = ("knn", "ann", "wann", "wann_lnr", "linear_probe")


def _split_file(path: Path, name: str, labels: np.ndarray) -> str:
    storage.write_text(path, "".join(f"images/{name}_{i:04d}.jpg {y}\n" for i, y in enumerate(labels)))
    return str(path)


def synthetic_run(tmp_path: Path, **settings) -> ExperimentConfig:
    """A run folder as stage 1, inference and the sweep leave it: cached features of C overlapping Gaussian
    classes (train long-tailed, shuffled), a stage-1 checkpoint's classifier, inference predictions that make LNR
    flip six head-class samples to class 3, and the sweep's chosen threshold. Split files name images that do
    not exist (nothing here decodes one). `settings`: neighbours keys."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0.0, 1.5, (C, D))
    train_y = rng.permutation(np.repeat(np.arange(C), TRAIN_COUNTS))
    eval_y = np.repeat(np.arange(C), EVAL_PER_CLASS)
    features = {name: (centres[y] + rng.normal(0.0, 1.0, (y.size, D))).astype(np.float32)
                for name, y in (("train", train_y), ("val", eval_y), ("test", eval_y))}  # fmt: skip
    data_dir = tmp_path / "data"
    files = {name: _split_file(data_dir / f"{name}.txt", name, y)
             for name, y in (("train", train_y), ("val", eval_y), ("test", eval_y))}  # fmt: skip
    data = DataConfig(root=str(data_dir), train_split=files["train"], val_split=files["val"],
                      test_split=files["test"], num_classes=C)  # fmt: skip
    cfg = ExperimentConfig(
        data=data, run_dir=str(tmp_path / "run"), stage2=Stage2Config(epochs=4, batch_size=32, lr=0.05),
        neighbours=NeighboursConfig(**{"k": 5, "kmin": 3, "kmax": 15, **settings}),
    ).with_absolute_paths()  # fmt: skip
    layout = cfg.layout
    for name, array in features.items():
        storage.write_npy(layout.feature_file(name), array)
    checkpoint = layout.checkpoint("stage1")
    classifier = {
        "classifier.weight": torch.from_numpy(centres.astype(np.float32)),
        "classifier.bias": torch.zeros(C),
    }
    storage.write_with(checkpoint, lambda h: torch.save({"model": classifier}, h))
    storage.write_json(layout.features_meta, {"checkpoint": str(checkpoint), "pool": None, "pool_sha256": None,
                                              "checkpoint_sha256": storage.sha256_file(checkpoint)})  # fmt: skip
    probs = np.full((train_y.size, C), 0.01, np.float32)
    probs[np.arange(train_y.size), train_y] = 0.97
    probs[np.flatnonzero(train_y == 0)[:6]] = [0.05, 0.03, 0.02, 0.90]  # confidently class 3: flipped there
    storage.write_npy(layout.infer_file("predictions.npy"), probs)
    storage.write_npy(layout.infer_file("labels.npy"), train_y)
    storage.write_json(layout.infer_file("summary.json"), {"seed": 0, "threshold": THRESHOLD})
    storage.write_json(layout.chosen_threshold, {"threshold": THRESHOLD})
    return cfg


def with_method(cfg: ExperimentConfig, name: str, **settings) -> ExperimentConfig:
    """The config `reproduce` runs method `name` with (wann_lnr: at the tuned threshold), neighbours changed."""
    return replace(get_method(name).run_config(cfg), neighbours=replace(cfg.neighbours, **settings))


def brute_knn(cfg: ExperimentConfig, k: int) -> list[int]:
    """kNN written out: z-scores from the training rows, float64 distances, the k nearest (ties by index), the
    most frequent label (ties to the smallest class)."""
    layout = cfg.layout
    train, test = np.load(layout.feature_file("train")), np.load(layout.feature_file("test"))
    labels = np.loadtxt(cfg.data.train_split, dtype=str)[:, 1].astype(np.int64)
    mean, std = train.astype(np.float64).mean(0), train.astype(np.float64).std(0)
    train, test = ((x - mean) / std for x in (train, test))
    predicted = []
    for query in test:
        distances = ((train - query) ** 2).sum(1)
        near = sorted(range(len(train)), key=lambda j: (distances[j], j))[:k]
        counts = Counter(int(labels[j]) for j in near)
        predicted.append(min(c for c in counts if counts[c] == max(counts.values())))
    return predicted


def test_every_method_runs_through_the_features_backend(tmp_path):
    cfg = synthetic_run(tmp_path)
    results = {}
    for name in METHODS:
        folder = tmp_path / name
        results[name] = run_on_features(with_method(cfg, name), folder)
        assert json.loads((folder / "results.json").read_text())["method"] == name
        with np.load(folder / "test_logits.npz") as saved:
            logits = saved["logits"]
            assert logits.shape == (C * EVAL_PER_CLASS, C) and logits.dtype == np.float32
            accuracy = 100.0 * (logits.argmax(1) == saved["labels"]).mean()
        assert results[name]["test"]["top1"] == pytest.approx(accuracy)
        assert results[name]["trained_on"] == "cached features"
    assert np.load(tmp_path / "knn" / "test_logits.npz")["logits"].argmax(1).tolist() == brute_knn(cfg, 5)
    for name in ("knn", "ann", "wann", "wann_lnr"):
        report = results[name]["neighbours"]
        assert report["space"]["features"] == "stage-1 features (features/)" and report["space"]["dim"] == D
        assert results[name]["best_epoch"] is None
        note = results[name]["notes"][0]
        smallest = 5 if name == "knn" else 3
        assert note.startswith(f"With k >= {smallest} neighbours a class with fewer than {smallest // 2 + 1}")
    for name in ("ann", "wann"):
        reliability = results[name]["neighbours"]["reliability"]
        assert (
            sum(reliability["counts"].values()) == sum(TRAIN_COUNTS) and 3 <= reliability["mean_k_star"] <= 15
        )
    assert results["ann"]["neighbours"]["reliability"] == results["wann"]["neighbours"]["reliability"]
    assert (
        isinstance(results["linear_probe"]["best_epoch"], int) and "neighbours" not in results["linear_probe"]
    )
    assert results["wann_lnr"]["flips"]["num_flips"] == 6 and results["wann"]["flips"]["num_flips"] == 0


def test_the_defaults_state_the_majority_sentence_of_the_issue():
    labels = np.repeat(np.arange(3), (30, 6, 5))
    assert neighbours.majority_note(11, labels, 3).startswith(
        "With k >= 11 neighbours a class with fewer than 6 training images cannot win a majority (6 of 11)"
    )
    assert "; 1 of 3 classes have fewer than 6 training images" in neighbours.majority_note(11, labels, 3)


def test_wann_lnr_computes_reliability_and_votes_on_the_flipped_labels(tmp_path):
    cfg = synthetic_run(tmp_path)
    flips, _ = FlipSource(cfg.layout).at(THRESHOLD)
    inputs = head_inputs(cfg)
    flipped = flips.apply(np.arange(inputs.labels["train"].size), inputs.labels["train"])
    assert (flipped != inputs.labels["train"]).sum() == 6
    lnr_cfg = with_method(cfg, "wann_lnr")
    results = run_on_features(lnr_cfg, tmp_path / "wann_lnr")
    fit = fresh_head_fitter(cfg.stage2, get_method("wann"), inputs.manifest, inputs.labels, cfg.seed, "top1")
    _, on_flipped, own = neighbours.wann(lnr_cfg, inputs.features, {**inputs.labels, "train": flipped}, fit)
    _, on_original, _ = neighbours.wann(lnr_cfg, inputs.features, inputs.labels, fit)
    saved = np.load(tmp_path / "wann_lnr" / "test_logits.npz")["logits"]
    assert np.array_equal(saved, on_flipped) and not np.array_equal(saved, on_original)
    assert results["neighbours"]["reliability"] == own["neighbours"]["reliability"]


def test_an_embedding_file_replaces_the_stage1_features(tmp_path):
    cfg = synthetic_run(tmp_path)
    rng = np.random.default_rng(3)
    labels = {name: np.loadtxt(getattr(cfg.data, f"{name}_split"), dtype=str)[:, 1].astype(np.int64)
              for name in ("train", "val", "test")}  # fmt: skip
    # a 3-dim embedding in which the classes are far apart: every method is perfect on it
    arrays = {name: (np.eye(C, 3) * 20)[y] + rng.normal(0, 0.1, (y.size, 3)) for name, y in labels.items()}
    path = tmp_path / "embeddings.npz"
    np.savez(path, **arrays)
    for name in ("knn", "wann", "linear_probe"):
        results = run_on_features(with_method(cfg, name, embeddings=str(path)), tmp_path / name)
        space = results["neighbours"]["space"] if name != "linear_probe" else results["probe"]["space"]
        assert space["features"] == str(path) and space["input_dim"] == 3
        # the votes are perfect; the probe's few epochs of instance sampling may still miss the 5-image class
        assert results["test"]["top1"] >= (100.0 if name != "linear_probe" else 70.0)


@pytest.mark.parametrize(("projection", "dim"), [("pca", 3), ("lda", None), ("flda", None)])
def test_projections_and_the_cosine_metric(tmp_path, projection, dim):
    cfg = synthetic_run(tmp_path)
    results = run_on_features(
        with_method(cfg, "wann", projection=projection, dim=dim, metric="cosine"), tmp_path / "w"
    )
    space = results["neighbours"]["space"]
    assert (
        space["projection"] == projection and space["dim"] == (dim or C - 1) and space["metric"] == "cosine"
    )
    if projection == "flda":  # fitted on the training samples with k* < kmax only
        assert space["fitted_rows"] < sum(TRAIN_COUNTS)


# ------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "override", ["neighbours.kmin=13 neighbours.kmax=11", "neighbours.kmin=12", "neighbours.kmax=50"]
)
def test_crossed_or_even_k_ranges_are_one_line_naming_the_keys(override):
    with pytest.raises(ConfigError) as error:
        load_config(ExperimentConfig, REPO / "configs" / "mini.yaml", override.split())
    message = str(error.value)
    assert "\n" not in message and "neighbours" in message and "must be odd with 1 <= kmin <= kmax" in message


def _refused(cfg: ExperimentConfig, name: str, folder: Path, monkeypatch) -> str:
    """The one line run_on_features raises for `name`, before any search or Ray start, writing nothing."""
    import ray

    from lnr_dist.runtime import sharded_search

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started before the input check"))
    monkeypatch.setattr(
        sharded_search, "sharded_nearest", lambda *a, **k: pytest.fail("searched before the check")
    )
    monkeypatch.setattr(neighbours, "nearest", lambda *a, **k: pytest.fail("searched before the input check"))
    with pytest.raises(UserError) as error:
        run_on_features(with_method(cfg, name, workers=2), folder)
    assert not folder.exists()
    assert "\n" not in str(error.value)
    return str(error.value)


def test_an_embedding_file_of_other_row_counts_is_one_line_naming_it(tmp_path, monkeypatch):
    cfg = synthetic_run(tmp_path)
    path = tmp_path / "emb.npz"
    np.savez(path, train=np.zeros((sum(TRAIN_COUNTS) - 1, 3)), val=np.zeros((48, 3)), test=np.zeros((48, 3)))
    message = _refused(replace(cfg, neighbours=replace(cfg.neighbours, embeddings=str(path))), "wann", tmp_path / "o",
                       monkeypatch)  # fmt: skip
    assert message == (f"{path}: array 'train' has {sum(TRAIN_COUNTS) - 1} rows but the train split "
                       f"{cfg.data.train_split} has {sum(TRAIN_COUNTS)} samples (neighbours.embeddings: row i = "
                       "line i of the split file)")  # fmt: skip
    np.savez(path, train=np.zeros((sum(TRAIN_COUNTS), 3)), val=np.zeros((48, 3)))
    assert "no array 'test'" in _refused(replace(cfg, neighbours=replace(cfg.neighbours, embeddings=str(path))),
                                         "knn", tmp_path / "o", monkeypatch)  # fmt: skip
    missing = replace(cfg, neighbours=replace(cfg.neighbours, embeddings=str(tmp_path / "nope.npz")))
    assert _refused(missing, "linear_probe", tmp_path / "o", monkeypatch).startswith(
        "neighbours.embeddings: "
    )
    path.write_text("not a zip")
    assert "is not a .npz" in _refused(replace(cfg, neighbours=replace(cfg.neighbours, embeddings=str(path))),
                                       "knn", tmp_path / "o", monkeypatch)  # fmt: skip


def test_k_or_kmax_above_the_training_split_is_one_line(tmp_path, monkeypatch):
    cfg = synthetic_run(tmp_path)
    big = replace(
        cfg, neighbours=replace(cfg.neighbours, k=sum(TRAIN_COUNTS) + 1, kmax=sum(TRAIN_COUNTS) + 2)
    )
    assert _refused(big, "knn", tmp_path / "o", monkeypatch).startswith(
        f"neighbours.k ({sum(TRAIN_COUNTS) + 1})"
    )
    assert _refused(big, "ann", tmp_path / "o", monkeypatch).startswith(
        f"neighbours.kmax ({sum(TRAIN_COUNTS) + 2}) is larger than the training split"
    )


def test_the_sweep_leaves_wann_lnr_to_a_sweepable_method():
    cfg = load_config(ExperimentConfig, REPO / "configs" / "mini.yaml", [])
    method = get_method("wann_lnr")
    assert method.threshold == "tuned" and not method.sweepable
    assert [s.name for s in steps_of(method, cfg)] == ["stage1", "infer", "tune", "features"]
    alone = replace(cfg, stage2=replace(cfg.stage2, method="wann_lnr"),
                    reproduce=replace(cfg.reproduce, methods=("wann_lnr",)))  # fmt: skip
    assert sweep_method(alone).name == "lnr"
    from lnr_dist.tune.sweep import run_sweep

    with pytest.raises(UserError, match=r"stage2.method 'wann_lnr' is scored without a trained head"):
        run_sweep(alone)


def test_lnr_dist_stage2_runs_a_neighbour_method(tmp_path, capsys):
    cfg = synthetic_run(tmp_path)
    config_file = tmp_path / "config.yaml"
    storage.write_text(config_file, config_lib.to_yaml(with_method(cfg, "ann")))
    assert main(["stage2", "--config", str(config_file), "stage2.backend=features"]) == 0
    out = capsys.readouterr().out
    assert "stage2 done: method ann scored without training; test top-1" in out
    assert (cfg.layout.stage("stage2") / "test_logits.npz").is_file()


def test_reproduce_runs_the_methods_and_notes_the_majority_rule(tmp_path):
    """run_seed + write_report on the synthetic run folder, the shared steps stubbed (their outputs exist)."""
    from lnr_dist.reproduce.report import write_report
    from lnr_dist.reproduce.runner import run_seed

    cfg = synthetic_run(tmp_path)
    cfg = replace(cfg, reproduce=replace(cfg.reproduce, methods=METHODS, baselines=("knn",), bootstrap=20),
                  stage2=replace(cfg.stage2, backend="features"))  # fmt: skip
    jobs = []
    outcome = run_seed(cfg, lambda job, c, out: jobs.append((job, c.stage2.method)) or {})
    assert jobs == [("stage1", "lnr"), ("infer", "lnr"), ("tune", "lnr"), ("features", "lnr")]
    write_report(cfg, [outcome])
    report = cfg.layout.report_file("results.md").read_text()
    assert "- **knn**: With k >= 5 neighbours a class with fewer than 3 training images" in report
    assert "- **wann**: With k >= 3 neighbours" in report and "**linear_probe**" in report
    assert "| wann_lnr | 1 |" in report
