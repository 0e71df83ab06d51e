"""Minority-class mining (stage2/mining.py, features/mine.py, the `mining` and `mining_random` methods) on a
synthetic run folder of cached features: no image, no Ray."""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lnr_dist.cli import main
from lnr_dist.core import config as config_lib
from lnr_dist.core import storage
from lnr_dist.core.config import ConfigError, load_config
from lnr_dist.core.errors import UserError
from lnr_dist.core.layout import RunLayout
from lnr_dist.core.synthetic import exponential_counts
from lnr_dist.data.config import DataConfig
from lnr_dist.data.manifest import Manifest
from lnr_dist.data.pool import Pool
from lnr_dist.experiment import ExperimentConfig, MiningConfig, Stage2Config
from lnr_dist.features.backend import run_on_features
from lnr_dist.features.mine import _mined_classes_figure, format_summary, run_mining
from lnr_dist.reproduce.methods import sections_of, steps_of
from lnr_dist.reproduce.runner import reproduce
from lnr_dist.stage2 import mining
from lnr_dist.stage2.registry import get_method, reproduce_methods

from ..conftest import tensorboard_scalars

REPO = Path(__file__).resolve().parents[2]
C, D = 4, 16
TRAIN_COUNTS = (150, 60, 12, 6)  # many, medium, few, few (data/manifest.py: > 100, 20..100, < 20)
POOL_IN, POOL_FAR = 60, 5


def _gaussian_classes(rng: np.random.Generator, centres: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return (centres[labels] + rng.normal(0.0, 1.0, (labels.size, centres.shape[1]))).astype(np.float32)


def planted_case(seed: int = 0):
    """Labelled features of C Gaussian classes (long-tailed), and a pool of POOL_IN images from the same classes
    (mostly the head class) with POOL_FAR far-away images (few-shot class 3) planted at known rows.
    Returns (train_x (N, D), train_y (N,), pool_x (M, D), pool_y (M,), planted rows (POOL_FAR,))."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 3.0, (C, D))
    train_y = np.repeat(np.arange(C), TRAIN_COUNTS)
    train_x = _gaussian_classes(rng, centres, train_y)
    near_y = np.repeat(np.arange(C), (40, 10, 5, 5))
    near = _gaussian_classes(rng, centres, near_y)
    far = rng.normal(0.0, 25.0, (POOL_FAR, D)).astype(np.float32)
    pool_x = np.concatenate([near, far])
    pool_y = np.concatenate([near_y, np.full(POOL_FAR, 3)])
    order = rng.permutation(pool_y.size)
    planted = np.flatnonzero(order >= POOL_IN)
    return train_x, train_y, pool_x[order], pool_y[order], planted


def test_mining_ranks_planted_out_of_distribution_images_first():
    train_x, train_y, pool_x, _, planted = planted_case()
    before = torch.random.get_rng_state()
    scores = mining.mining_scores(train_x, train_y, pool_x, C, MiningConfig(), seed=0)
    assert torch.equal(torch.random.get_rng_state(), before)  # seeded without touching the global stream
    assert scores.shape == (POOL_IN + POOL_FAR,) and scores.dtype == np.float64
    assert sorted(mining.rank(scores)[:POOL_FAR].tolist()) == planted.tolist()
    again = mining.mining_scores(train_x, train_y, pool_x, C, MiningConfig(), seed=0)
    assert np.array_equal(scores, again)


def test_on_probabilities_the_few_shot_pool_images_are_mined_before_the_head_class():
    """autoencoder_input probabilities (the notebook code's): the autoencoder knows the confident head-class
    outputs, so the pool's few-shot images (classes 2, 3) rank first."""
    train_x, train_y, pool_x, pool_y, _ = planted_case()
    cfg = MiningConfig(autoencoder_input="probabilities")
    order = mining.rank(mining.mining_scores(train_x, train_y, pool_x, C, cfg, seed=0))
    assert set(pool_y[order[:10]].tolist()) <= {2, 3}
    assert np.mean(np.isin(pool_y, [2, 3])) < 0.4  # while they are a minority of the pool


def test_the_autoencoder_is_c_10_9_10_c_with_relu_between_layers():
    model = mining.autoencoder(7, (10, 9, 10))
    shapes = [(m.in_features, m.out_features) for m in model if isinstance(m, torch.nn.Linear)]
    assert shapes == [(7, 10), (10, 9), (9, 10), (10, 7)]
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Linear", "ReLU", "Linear", "ReLU", "Linear", "ReLU", "Linear"]


def test_scores_against_hand_computations():
    z = np.array([[1.0, 2.0], [0.0, 0.0]])
    z_hat = np.array([[1.0, 0.0], [3.0, -1.0]])
    assert mining.reconstruction_error(z, z_hat).tolist() == [2.0, 5.0]  # (0 + 4) / 2, (9 + 1) / 2
    logits = np.array([[0.0, 0.0], [np.log(3.0), 0.0], [0.0, 1000.0]])
    np.testing.assert_allclose(mining.max_softmax_scores(logits), [-0.5, -0.75, -1.0])
    entropy = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
    np.testing.assert_allclose(mining.entropy_scores(logits), [np.log(2.0), entropy, 0.0], atol=1e-12)


def test_random_picking_is_a_seeded_uniform_order():
    first, again, other = (mining.rank(mining.random_scores(50, s)) for s in (3, 3, 4))
    assert sorted(first.tolist()) == list(range(50))
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_rank_breaks_ties_by_dataset_index_and_refuses_nan():
    assert mining.rank(np.array([1.0, 3.0, 1.0, 3.0, 2.0])).tolist() == [1, 3, 4, 0, 2]
    with pytest.raises(ValueError, match="finite"):
        mining.rank(np.array([1.0, np.nan]))


def test_precision_at_k_and_the_precision_recall_curve_against_hand_computations():
    order = np.array([4, 0, 3, 1, 2])
    positive = np.array([True, False, False, True, True])  # by dataset index: 0, 3 and 4 are tail
    assert mining.precision_at_k(order, positive, 1) == 1.0
    assert mining.precision_at_k(order, positive, 3) == 1.0
    assert mining.precision_at_k(order, positive, 4) == 0.75
    precision, recall = mining.precision_recall(order, positive)
    np.testing.assert_allclose(precision, [1, 1, 1, 3 / 4, 3 / 5])
    np.testing.assert_allclose(recall, [1 / 3, 2 / 3, 1, 1, 1])
    with pytest.raises(ValueError, match=r"k must be in \[1, 5\]"):
        mining.precision_at_k(order, positive, 6)


def test_tail_groups_are_medium_and_few():
    manifest = Manifest.from_labels(np.repeat(np.arange(C), TRAIN_COUNTS), C)
    members = mining.group_members(manifest)
    assert members["tail"].tolist() == [False, True, True, True]
    assert members["few"].tolist() == [False, False, True, True]


def test_mining_config_is_checked():
    mini = REPO / "configs" / "mini.yaml"
    with pytest.raises(ConfigError, match=r"mining.budget must be >= 1"):
        load_config(ExperimentConfig, mini, ["mining.budget=0"])
    with pytest.raises(ConfigError, match="mining.hidden"):
        load_config(ExperimentConfig, mini, ["mining.hidden=[]"])
    cfg = load_config(ExperimentConfig, mini, [])
    assert (cfg.mining.recalibration_epochs, cfg.mining.autoencoder_epochs, cfg.mining.lr) == (15, 25, 1e-3)
    assert cfg.mining.hidden == (10, 9, 10)


# ------------------------------------------------------------------ a synthetic run folder of cached features
def _split_file(path: Path, name: str, labels: np.ndarray) -> str:
    storage.write_text(path, "".join(f"images/{name}_{i:04d}.jpg {y}\n" for i, y in enumerate(labels)))
    return str(path)


def synthetic_run(tmp_path: Path, budget: int = POOL_FAR, pool_labels: np.ndarray | None = None):
    """An ExperimentConfig whose run folder holds cached features (train/val/test/pool .npy, meta.json matching
    a checkpoint with a stage-1 classifier), as the features job leaves it; split files name images that do not
    exist (nothing here decodes one). Returns (cfg, pool_y, planted rows)."""
    train_x, train_y, pool_x, pool_y, planted = planted_case()
    rng = np.random.default_rng(1)
    centres = np.stack([train_x[train_y == c].mean(0) for c in range(C)])
    eval_y = np.repeat(np.arange(C), 10)
    data_dir, run_dir = tmp_path / "data", tmp_path / "run"
    files = {
        name: _split_file(data_dir / f"{name}.txt", name, labels)
        for name, labels in (("train", train_y), ("val", eval_y), ("test", eval_y))
    }
    files["pool"] = _split_file(data_dir / "pool.txt", "pool", pool_y if pool_labels is None else pool_labels)
    data = DataConfig(root=str(data_dir), train_split=files["train"], val_split=files["val"],
                      test_split=files["test"], unlabeled_split=files["pool"], num_classes=C)  # fmt: skip
    cfg = ExperimentConfig(
        data=data, run_dir=str(run_dir), stage2=Stage2Config(epochs=3, batch_size=32, lr=0.05),
        mining=MiningConfig(budget=budget),
    ).with_absolute_paths()  # fmt: skip
    layout = cfg.layout
    features = {"train": train_x, "val": _gaussian_classes(rng, centres, eval_y),
                "test": _gaussian_classes(rng, centres, eval_y), "pool": pool_x}  # fmt: skip
    for name, array in features.items():
        storage.write_npy(layout.feature_file(name), array)
    checkpoint = layout.checkpoint("stage1")
    # a nearest-centre classifier stands in for stage 1's: logits w_c . x + b_c = -|x - mu_c|^2 / 2 + |x|^2 / 2
    weight = torch.from_numpy(centres.astype(np.float32))
    bias = torch.from_numpy((-(centres**2).sum(1) / 2).astype(np.float32))
    storage.write_with(checkpoint, lambda h: torch.save({"model": {"classifier.weight": weight,
                                                                   "classifier.bias": bias}}, h))  # fmt: skip
    pool_paths = "\n".join(f"images/pool_{i:04d}.jpg" for i in range(pool_y.size))
    storage.write_json(layout.features_meta, {"checkpoint": str(checkpoint),
                                              "checkpoint_sha256": storage.sha256_file(checkpoint),
                                              "pool": files["pool"],
                                              "pool_sha256": hashlib.sha256(pool_paths.encode()).hexdigest()})  # fmt: skip
    return cfg, pool_y, planted


def test_the_mine_command_writes_its_files(tmp_path, capsys):
    cfg, pool_y, planted = synthetic_run(tmp_path, budget=20)
    config_file = tmp_path / "config.yaml"
    storage.write_text(config_file, config_lib.to_yaml(cfg))
    meta_before = cfg.layout.features_meta.read_text()
    assert main(["mine", "--config", str(config_file), "--budget", str(POOL_FAR)]) == 0
    assert cfg.layout.features_meta.read_text() == meta_before  # the cache was used, not extracted again
    out = capsys.readouterr().out
    assert f"precision@{POOL_FAR} of {pool_y.size} pool images" in out and "minority-class mining" in out
    folder = cfg.layout.mine
    with open(folder / "mined.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["rank"] for r in rows] == [str(k) for k in range(1, POOL_FAR + 1)]
    assert sorted(int(r["index"]) for r in rows) == planted.tolist()
    assert all(r["path"] == f"images/pool_{int(r['index']):04d}.jpg" for r in rows)
    assert all(int(r["label"]) == pool_y[int(r["index"])] == 3 and r["group"] == "few" for r in rows)
    assert [float(r["score"]) for r in rows] == sorted((float(r["score"]) for r in rows), reverse=True)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["budget"] == POOL_FAR and summary["pool_size"] == pool_y.size
    assert summary["precision_at_k"]["mining"] == {"tail": 1.0, "medium": 0.0, "few": 1.0}
    tail = np.isin(pool_y, [1, 2, 3])
    for name in ("random", "max_softmax", "entropy"):  # the baselines' precision from their own orders
        scores = mining.pool_scores(*_features(cfg), _classifier(cfg), cfg.mining, cfg.seed)
        expected = tail[mining.rank(scores[name])[:POOL_FAR]].mean()
        assert summary["precision_at_k"][name]["tail"] == pytest.approx(expected)
    assert summary["pool_fraction"]["tail"] == pytest.approx(tail.mean())
    assert summary["mined_class_counts"]["mining"] == [0, 0, 0, POOL_FAR]
    for name in ("precision_recall.png", "mined_classes.png", "config.yaml"):
        assert (folder / name).stat().st_size > 0
    assert (folder / "precision_recall.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert format_summary(summary).splitlines()[2].startswith("minority-class mining")


def _features(cfg):
    layout = cfg.layout
    train_y = np.loadtxt(cfg.data.train_split, dtype=str)[:, 1].astype(np.int64)
    return np.load(layout.feature_file("train")), train_y, np.load(layout.feature_file("pool"))


def _classifier(cfg):
    return torch.load(cfg.layout.checkpoint("stage1"), weights_only=True)["model"]


def test_a_budget_larger_than_the_pool_is_one_line_before_any_work(tmp_path, capsys):
    cfg, pool_y, _ = synthetic_run(tmp_path)
    config_file = tmp_path / "config.yaml"
    storage.write_text(config_file, config_lib.to_yaml(cfg))
    assert main(["mine", "--config", str(config_file), "--budget", str(pool_y.size + 1)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert f"mining.budget ({pool_y.size + 1}) is larger than the pool ({pool_y.size} images in" in err
    assert cfg.data.unlabeled_split in err
    assert not cfg.layout.mine.exists()
    big = replace(
        cfg, mining=replace(cfg.mining, budget=pool_y.size + 1), stage2=replace(cfg.stage2, method="mining")
    )
    with pytest.raises(UserError, match=rf"^mining.budget \({pool_y.size + 1}\) is larger than the pool"):
        run_on_features(big, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_mining_methods_add_annotated_pool_images_to_the_head(tmp_path, monkeypatch):
    cfg, pool_y, planted = synthetic_run(tmp_path)
    asked = []
    annotate = Pool.annotate

    def spy(self, indices):
        asked.append(np.asarray(indices).tolist())
        return annotate(self, indices)

    monkeypatch.setattr(Pool, "annotate", spy)
    results = {}
    for name in ("mislas", "mining", "mining_random"):
        folder = tmp_path / name
        results[name] = run_on_features(replace(cfg, stage2=replace(cfg.stage2, method=name)), folder)
        assert (folder / "results.json").is_file() and (folder / "test_logits.npz").is_file()
        # the head's epochs as TensorBoard scalars, as a sweep trial's
        curves = tensorboard_scalars(RunLayout.tensorboard(folder))
        assert [step for step, _ in curves["val/balanced_acc"]] == list(range(cfg.stage2.epochs))
    mined = results["mining"]["extra_train"]
    assert sorted(mined["pool_indices"]) == planted.tolist() and mined["count"] == POOL_FAR
    assert mined["class_counts"] == [0, 0, 0, POOL_FAR] and mined["precision"]["few"] == 1.0
    picked = results["mining_random"]["extra_train"]["pool_indices"]
    assert picked == mining.rank(mining.random_scores(pool_y.size, cfg.seed))[:POOL_FAR].tolist()
    assert "extra_train" not in results["mislas"]
    # the annotator was asked for the K picked images only, once per method
    assert asked == [mined["pool_indices"], picked]
    assert results["mining"]["manifest"] == results["mislas"]["manifest"]  # grouped by the labelled split


def test_pool_labels_change_what_the_annotator_says_not_what_is_mined(tmp_path):
    cfg, pool_y, _ = synthetic_run(tmp_path / "a")
    scrambled = np.random.default_rng(5).permutation(pool_y)
    other, _, _ = synthetic_run(tmp_path / "b", pool_labels=scrambled)
    first, second = (run_mining(c)["precision_at_k"] for c in (cfg, other))
    a = np.loadtxt(
        cfg.layout.mine_file("mined.csv"), delimiter=",", skiprows=1, usecols=(1, 4), dtype=np.int64
    )
    b = np.loadtxt(
        other.layout.mine_file("mined.csv"), delimiter=",", skiprows=1, usecols=(1, 4), dtype=np.int64
    )
    assert np.array_equal(a[:, 0], b[:, 0])  # the same images mined
    assert np.array_equal(b[:, 1], scrambled[b[:, 0]])  # labelled by the (scrambled) annotator
    assert first["mining"]["few"] == 1.0 and first != second


def test_the_mining_methods_are_declared_for_reproduce():
    cfg = load_config(ExperimentConfig, REPO / "configs" / "mini.yaml", [])
    for name in ("mining", "mining_random"):
        method = get_method(name)
        assert [s.name for s in steps_of(method, cfg)] == ["stage1", "features"]
        assert "mining" in sections_of(method, cfg) and "data" in sections_of(method, cfg)
        assert method.backend(cfg.stage2) == "features"
    assert "mining_random" in cfg.reproduce.baselines


def test_a_mining_run_without_a_pool_is_one_line_naming_the_key(tmp_path):
    cfg = load_config(ExperimentConfig, REPO / "configs" / "mini.yaml",
                      ["data.unlabeled_split=null", f"run_dir={tmp_path / 'run'}"])  # fmt: skip
    names = [m.name for m in reproduce_methods(replace(cfg, reproduce=replace(cfg.reproduce, methods=())))]
    assert "mining" not in names and "mislas" in names  # "every method" leaves out those that need a pool
    with pytest.raises(UserError, match=r"^method mining needs an unlabelled pool: set data.unlabeled_split"):
        reproduce(replace(cfg, reproduce=replace(cfg.reproduce, methods=("mislas", "mining"))))
    assert not (tmp_path / "run").exists()  # refused before any job


def test_reproduce_runs_the_mining_methods_and_compares_them_with_mislas_and_random_picking(tmp_path):
    """run_seed + write_report on the synthetic run folder: the shared steps the methods declare (stage1,
    features: stubbed, the features being cached), each method's head, and comparisons.csv's rows."""
    from lnr_dist.reproduce.report import write_report
    from lnr_dist.reproduce.runner import run_seed

    cfg, _, _ = synthetic_run(tmp_path)
    methods = ("mislas", "mining", "mining_random")
    cfg = replace(cfg, reproduce=replace(cfg.reproduce, methods=methods, bootstrap=50),
                  stage2=replace(cfg.stage2, backend="features"))  # fmt: skip
    jobs = []
    outcome = run_seed(cfg, lambda job, c, out: jobs.append(job) or {})
    assert jobs == ["stage1", "features"]
    assert set(outcome.methods) == set(methods)
    write_report(cfg, [outcome])
    with open(cfg.layout.report_file("comparisons.csv"), newline="") as handle:
        pairs = {(r["method"], r["baseline"]) for r in csv.DictReader(handle)}
    assert pairs == {("mining", "mislas"), ("mining", "mining_random")}
    results = json.loads((cfg.layout.method("mining") / "results.json").read_text())
    assert results["extra_train"]["count"] == POOL_FAR
    again = run_seed(cfg, lambda job, c, out: {})  # resumable: nothing runs twice
    assert again.ran == [] and len(again.skipped) == 5


def test_the_mined_class_figure_shows_groups_only_for_many_classes(tmp_path):
    counts = exponential_counts(100, 500, 2)
    manifest = Manifest.from_labels(np.repeat(np.arange(100), counts), 100)
    mined = {name: np.bincount(np.arange(30) * 3, minlength=100).tolist() for name in mining.RANKERS}
    path = _mined_classes_figure(mined, manifest, 30, tmp_path)
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert Image.open(path).size[0] < 800  # one panel (groups), not 100 x 4 bars


def test_the_feature_cache_is_extracted_again_for_other_pool_images_not_other_pool_labels(
    tmp_path, monkeypatch
):
    from lnr_dist.features import cache

    cfg, pool_y, _ = synthetic_run(tmp_path)
    extractions = []
    monkeypatch.setattr(
        cache, "load_model", lambda *args: None
    )  # the synthetic checkpoint holds a classifier only
    monkeypatch.setattr(cache, "run_workers", lambda *args: extractions.append(args[3]))
    assert set(cache.cached_features(cfg)) == {"train", "val", "test", "pool"} and extractions == []
    pool_file = Path(cfg.data.unlabeled_split)
    relabelled = [
        f"{line.split()[0]} {(int(line.split()[1]) + 1) % C}" for line in pool_file.read_text().splitlines()
    ]
    storage.write_text(pool_file, "\n".join(relabelled) + "\n")
    cache.cached_features(cfg)
    assert extractions == []  # the pool's labels are not what its features depend on
    storage.write_text(pool_file, "".join(f"images/other_{i:04d}.jpg 0\n" for i in range(pool_y.size)))
    cache.cached_features(cfg)
    assert extractions == ["features"]
    meta = json.loads(cfg.layout.features_meta.read_text())
    expected = hashlib.sha256("\n".join(f"images/other_{i:04d}.jpg" for i in range(pool_y.size)).encode())
    assert meta["pool_sha256"] == expected.hexdigest()
