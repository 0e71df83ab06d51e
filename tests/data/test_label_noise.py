"""Label noise on the training split (lnr_dist/data/label_noise.py, splits.load_train_split): rates, index keys,
the asymmetric map, clean validation/test, groups from clean counts, bad input, and a consumer of reproduce."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from lnr_dist.cli import main
from lnr_dist.core import config as config_lib
from lnr_dist.core import storage
from lnr_dist.core.config import ConfigError, load_config
from lnr_dist.core.errors import UserError
from lnr_dist.data import label_noise as ln
from lnr_dist.data.config import LabelNoiseConfig
from lnr_dist.data.manifest import Manifest
from lnr_dist.data.splits import load_split, load_train_split
from lnr_dist.experiment import ExperimentConfig
from lnr_dist.lnr.rng import uniforms
from lnr_dist.reproduce.report import _noise_lines
from lnr_dist.reproduce.runner import SeedOutcome
from lnr_dist.stage2.flip_sources import LNR_FLIPS, LabelContext
from lnr_dist.train.trainer import load_splits

from ..conftest import mini_data_config, mini_experiment

C, N = 10, 20_000
LABELS = np.random.default_rng(3).integers(0, C, N)
FEATURES = np.random.default_rng(4).random((N, 12))


def within_3_sigma(changed: np.ndarray, expected: float) -> None:
    sigma = math.sqrt(expected * (1 - expected) / changed.size)
    assert abs(changed.mean() - expected) < 3 * sigma, (changed.mean(), expected, sigma)


def truncated_normal_mean(mu: float, sd: float) -> float:
    """Mean of N(mu, sd^2) truncated to [0, 1]."""
    a, b = (0 - mu) / sd, (1 - mu) / sd
    pdf = lambda x: math.exp(-x * x / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    return mu + sd * (pdf(a) - pdf(b)) / (cdf(b) - cdf(a))


def noisy(pattern: str, rate: float, seed: int, rows: np.ndarray | None = None) -> np.ndarray:
    rows = np.arange(N) if rows is None else rows
    if pattern == "symmetric":
        return ln.symmetric_noise(LABELS[rows], C, rate, seed, rows)
    if pattern == "asymmetric":
        return ln.asymmetric_noise(LABELS[rows], ln.asymmetric_targets(C), rate, seed, rows)
    return ln.instance_noise(LABELS[rows], FEATURES[rows], C, rate, seed, rows)


@pytest.mark.parametrize("rate", [0.2, 0.4])
@pytest.mark.parametrize("pattern", ["symmetric", "asymmetric", "instance"])
def test_realised_rate_is_within_3_sigma_of_the_rate(pattern, rate):
    expected = truncated_normal_mean(rate, ln.INSTANCE_STD) if pattern == "instance" else rate
    within_3_sigma(noisy(pattern, rate, seed=11) != LABELS, expected)


def test_instance_rate_is_the_truncated_normal_mean_near_zero():
    # at rate 0.05 truncation lifts the mean to ~0.085: the per-sample rates are truncated, not clipped
    changed = noisy("instance", 0.05, seed=2) != LABELS
    within_3_sigma(changed, truncated_normal_mean(0.05, ln.INSTANCE_STD))
    assert changed.mean() > 0.07


@pytest.mark.parametrize("pattern", ["symmetric", "asymmetric", "instance"])
def test_a_sample_gets_the_same_noisy_label_in_any_shard_or_order(pattern):
    whole = noisy(pattern, 0.4, seed=5)
    order = np.random.default_rng(0).permutation(N)
    shards = [noisy(pattern, 0.4, 5, part) for part in np.array_split(order, 3)]
    assert np.array_equal(np.concatenate(shards), whole[order])
    assert not np.array_equal(noisy(pattern, 0.4, seed=6), whole)  # the seed matters


def test_symmetric_never_keeps_the_class_and_reaches_every_other_one():
    out = noisy("symmetric", 0.5, seed=1)
    changed = out != LABELS
    pairs = {(int(a), int(b)) for a, b in zip(LABELS[changed], out[changed], strict=True)}
    assert pairs == {(a, b) for a in range(C) for b in range(C) if a != b}
    # uniform over the other C - 1 classes: each target of class 0 within 3 sigma of 1/9 of its flips
    targets = out[changed & (LABELS == 0)]
    for c in range(1, C):
        within_3_sigma(targets == c, 1 / (C - 1))


def test_asymmetric_follows_the_map_and_keeps_the_classes_it_leaves_out():
    default = noisy("asymmetric", 0.4, seed=1)
    changed = default != LABELS
    assert np.array_equal(default[changed], (LABELS[changed] + 1) % C)
    targets = ln.asymmetric_targets(C, {9: 1, 2: 0, 3: 5, 5: 3, 4: 7})  # CIFAR-10's map (Patrini et al.)
    out = ln.asymmetric_noise(LABELS, targets, 0.4, 1)
    changed = out != LABELS
    assert np.array_equal(out[changed], targets[LABELS[changed]])
    assert set(np.unique(LABELS[changed])) == {9, 2, 3, 5, 4}
    within_3_sigma(changed[np.isin(LABELS, [9, 2, 3, 5, 4])], 0.4)


def test_noise_draws_are_not_lnr_draws_for_the_same_seed():
    # LNR draws uniforms(seed, index, class) for classes 0..C-1; the noise's flip draw uses its own slot
    index = np.arange(1000)
    flip_draw = uniforms(7, index, np.full(1000, ln.NOISE_SLOT))
    for c in range(C):
        assert not np.any(flip_draw == uniforms(7, index, np.full(1000, c)))


def test_noise_summary_and_transitions():
    out = noisy("asymmetric", 0.3, seed=1)
    summary = ln.noise_summary(LABELS, out, C)
    assert summary["num_noisy"] == int((out != LABELS).sum()) == sum(summary["noisy_from"])
    assert summary["noisy_to"] == np.roll(summary["noisy_from"], 1).tolist()  # c -> c + 1
    rows = ln.noise_transitions(LABELS, out)
    assert [r[:2] for r in rows] == [[c, (c + 1) % C] for c in range(C)]
    assert [r[2] for r in rows] == summary["noisy_from"]


# the training split of the real mini set


def test_train_split_carries_the_noise_and_val_test_stay_clean(mini_root, tmp_path):
    noise = {"pattern": "symmetric", "rate": 0.4, "seed": 3}
    cfg = mini_experiment(
        mini_root, tmp_path, data=mini_data_config(mini_root, label_noise=LabelNoiseConfig(**noise))
    )
    clean = {
        name: load_split(getattr(cfg.data, f"{name}_split"), mini_root, 10, name)
        for name in ("train", "val", "test")
    }
    splits = load_splits(cfg)  # what the Ray Train loaders, the features cache and the binary task read
    train = splits["train"]
    assert np.array_equal(train.clean_labels, clean["train"].labels)
    changed = train.labels != clean["train"].labels
    within_3_sigma(changed, 0.4)
    assert np.array_equal(train.labels, load_train_split(cfg.data).labels)  # the inference job's input
    for name in ("val", "test"):
        assert np.array_equal(splits[name].labels, clean[name].labels)
        assert splits[name].clean_labels is None
    # off: the file's labels
    assert np.array_equal(load_train_split(mini_data_config(mini_root)).labels, clean["train"].labels)


def test_groups_come_from_the_clean_counts(mini_root):
    data = mini_data_config(mini_root, label_noise=LabelNoiseConfig("symmetric", 0.4, seed=3))
    train = load_train_split(data)
    manifest = Manifest.of_split(train, 10)
    clean = Manifest.from_labels(train.clean_labels, 10)
    assert np.array_equal(manifest.group, clean.group)
    assert np.array_equal(manifest.clean_counts, clean.class_counts)
    assert np.array_equal(
        manifest.class_counts, np.bincount(train.labels, minlength=10)
    )  # what training sees
    # the noise would move classes between groups (tail classes gain labels): the clean counts decide
    assert not np.array_equal(Manifest.from_labels(train.labels, 10).group, clean.group)
    back = Manifest.from_dict(json.loads(json.dumps(manifest.to_dict())))
    assert np.array_equal(back.group, clean.group) and back.label_noise["pattern"] == "symmetric"
    assert back.label_noise["realised_rate"] == pytest.approx(
        float((train.labels != train.clean_labels).mean())
    )


def test_instance_noise_reads_the_training_images(mini_root):
    data = mini_data_config(mini_root, label_noise=LabelNoiseConfig("instance", 0.3, seed=1, instance_side=8))
    train = load_train_split(data)
    within_3_sigma(train.labels != train.clean_labels, truncated_normal_mean(0.3, ln.INSTANCE_STD))
    again = load_train_split(replace(data, label_noise=replace(data.label_noise, instance_side=4)))
    assert not np.array_equal(again.labels, train.labels)  # other pixels, other flips


def test_a_noise_that_empties_a_class_is_refused(mini_root):
    # asymmetric at 0.99 moves nearly every label of the 1-image tail class away and none into it
    data = mini_data_config(mini_root, label_noise=LabelNoiseConfig("asymmetric", 0.99, class_map={"9": 0}))
    with pytest.raises(
        UserError, match="data.label_noise .* leaves class\\(es\\) 9 without a training label"
    ):
        load_train_split(data)


# bad input: one line naming the key, before any work


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.label_noise.rate=1.0", "data.label_noise: rate must be in [0, 1)"),
        ("data.label_noise.rate=-0.1", "data.label_noise: rate must be in [0, 1)"),
        ("data.label_noise.pattern=pairflip", "key 'data.label_noise.pattern': expected one of 'none', "),
        ("data.label_noise={pattern: none, rate: 0.2}", "data.label_noise: rate 0.2 with pattern none"),
        ("data.label_noise={pattern: asymmetric, rate: 0.2, class_map: {3: 12}}",
         "data: label_noise.class_map: class 12 of the map 3 -> 12 is outside [0, 10)"),
        ("data.label_noise={pattern: asymmetric, rate: 0.2, class_map: {3: 3}}",
         "data: label_noise.class_map: the map sends class 3 to itself"),
        ("data.label_noise={pattern: symmetric, rate: 0.2, class_map: {3: 4}}",
         "data.label_noise: class_map is read by pattern asymmetric only"),
        ("data.label_noise.rat=0.2", "unknown key 'data.label_noise.rat'"),
    ],
)  # fmt: skip
def test_bad_noise_config_is_one_line_naming_the_key(mini_root, tmp_path, override, message):
    path = config_lib.save_resolved(mini_experiment(mini_root, tmp_path / "run"), tmp_path, "job.yaml")
    with pytest.raises(ConfigError) as caught:
        load_config(ExperimentConfig, path, [override])
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_bad_noise_rate_stops_the_cli_before_any_job(mini_root, tmp_path, capsys):
    path = config_lib.save_resolved(mini_experiment(mini_root, tmp_path / "run"), tmp_path, "job.yaml")
    assert main(["stage1", "--config", str(path), "data.label_noise.rate=1.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "data.label_noise: rate must be in [0, 1)" in err and "\n" not in err
    assert not (tmp_path / "run").exists()


# consumers of reproduce: the features backend through the job registry, LNR's inputs, the report


def fake_features_run(mini_root, tmp_path, noise: LabelNoiseConfig):
    """A run folder with a stage-1 'checkpoint' (classifier only) and cached features matching it, so stage 2 on
    the features backend runs without Ray."""
    cfg = mini_experiment(
        mini_root, tmp_path / "run", data=mini_data_config(mini_root, label_noise=noise),
        stage2={"method": "mislas", "backend": "features", "epochs": 2},
    ).with_absolute_paths()  # fmt: skip
    layout, rng = cfg.layout, np.random.default_rng(0)
    checkpoint = layout.checkpoint("stage1")
    checkpoint.parent.mkdir(parents=True)
    torch.save(
        {"model": {"classifier.weight": torch.randn(10, 8), "classifier.bias": torch.zeros(10)}}, checkpoint
    )
    for name, split in load_splits(cfg).items():
        storage.write_npy(layout.feature_file(name), rng.standard_normal((len(split), 8)).astype(np.float32))
    storage.write_json(
        layout.features_meta, {"checkpoint_sha256": storage.sha256_file(checkpoint), "pool": None}
    )
    return cfg


def test_stage2_on_features_trains_on_the_noisy_labels_and_records_the_noise(mini_root, tmp_path):
    from lnr_dist.features.cache import head_inputs
    from lnr_dist.jobs import JOBS

    cfg = fake_features_run(mini_root, tmp_path, LabelNoiseConfig("symmetric", 0.3, seed=2))
    train = load_train_split(cfg.data)
    inputs = head_inputs(cfg)
    assert np.array_equal(inputs.labels["train"], train.labels)
    assert not np.array_equal(inputs.labels["train"], train.clean_labels)
    results = JOBS["stage2"](cfg, str(tmp_path / "out"))
    manifest = results["manifest"]
    assert manifest["label_noise"]["pattern"] == "symmetric"
    assert manifest["label_noise"]["num_noisy"] == int((train.labels != train.clean_labels).sum())
    assert manifest["groups"] == Manifest.from_labels(train.clean_labels, 10).to_dict()["groups"]
    record = json.loads(cfg.layout.label_noise.read_text())  # written by the job registry, RunLayout's path
    assert record["num_noisy"] == manifest["label_noise"]["num_noisy"] and record["transitions"]
    line = _noise_lines(cfg, [SeedOutcome(cfg.seed, cfg.layout.root, {}, None, [], [])])[0]
    assert line.startswith(
        f"**The training labels carry {100 * record['realised_rate']:.1f}% symmetric noise**"
    )
    # the noise off again: the stale record goes, results.md says nothing
    clean_cfg = replace(cfg, data=replace(cfg.data, label_noise=LabelNoiseConfig()))
    JOBS["stage2"](clean_cfg, str(tmp_path / "out"))
    assert not cfg.layout.label_noise.exists()
    assert _noise_lines(clean_cfg, [SeedOutcome(cfg.seed, cfg.layout.root, {}, None, [], [])]) == []


def test_lnr_flips_of_other_training_labels_are_refused(mini_root, tmp_path):
    cfg = mini_experiment(mini_root, tmp_path / "run").with_absolute_paths()
    clean = load_train_split(cfg.data).labels
    table_dir = cfg.layout.infer
    storage.save_flip_table(table_dir / "flips.npz", _empty_table())
    storage.write_json(table_dir / "summary.json", {"seed": 0, "threshold": 1.0,
                                                    "train_labels_sha256": storage.sha256_arrays(clean)})  # fmt: skip
    assert len(LNR_FLIPS.flips(LabelContext(cfg, clean, None))[0]) == 0
    noisy_labels = load_train_split(replace(cfg.data, label_noise=LabelNoiseConfig("symmetric", 0.2))).labels
    with pytest.raises(UserError, match="the inference job ran on other training labels"):
        LNR_FLIPS.flips(LabelContext(cfg, noisy_labels, None))


def _empty_table():
    from lnr_dist.lnr import FlipTable

    return FlipTable(np.zeros(0), np.zeros(0), np.zeros(0))


def test_every_reproduce_step_and_method_reruns_when_the_noise_changes(mini_root, tmp_path):
    from lnr_dist.reproduce.methods import JOB_SECTIONS, sections_of
    from lnr_dist.reproduce.runner import _hash
    from lnr_dist.stage2.registry import STAGE2_METHODS

    cfg = mini_experiment(mini_root, tmp_path)
    noisy = replace(cfg, data=replace(cfg.data, label_noise=LabelNoiseConfig("symmetric", 0.2)))
    reseeded = replace(
        noisy, data=replace(noisy.data, label_noise=LabelNoiseConfig("symmetric", 0.2, seed=1))
    )
    for job, sections in JOB_SECTIONS.items():
        digests = {_hash(c, set(sections)) for c in (cfg, noisy, reseeded)}
        assert len(digests) == 3, job
    for method in STAGE2_METHODS.values():
        digests = {_hash(c, sections_of(method, c), method.name) for c in (cfg, noisy, reseeded)}
        assert len(digests) == 3, method.name


def test_a_stage1_checkpoint_of_other_label_noise_is_not_resumed(mini_root, tmp_path):
    from lnr_dist.models.checkpoint import save_checkpoint
    from lnr_dist.train.trainer import _check_resumable

    from ..models.test_checkpoint import training_checkpoint

    cfg = mini_experiment(mini_root, tmp_path / "run")
    state = training_checkpoint(0)
    state["config"] = config_lib.to_dict(cfg)
    del state["config"]["data"]["label_noise"]  # written before the key existed: clean labels
    out = tmp_path / "run" / "stage1"
    save_checkpoint(out / "checkpoints" / "last.pt", state)
    _check_resumable(cfg, "stage1", out, None)  # clean labels then and now: resumed
    noisy = replace(cfg, data=replace(cfg.data, label_noise=LabelNoiseConfig("symmetric", 0.2)))
    with pytest.raises(UserError, match=r"another stage1 setup \(data.label_noise differ"):
        _check_resumable(noisy, "stage1", out, None)


@pytest.mark.ray
def test_the_inference_job_flips_the_noisy_labels(mini_root, tmp_path, ray_session):
    """LNR's input on Ray: two inference workers read the noisy training labels, record them, and the flips serve
    a stage 2 on the same noise only."""
    from lnr_dist.infer.inference import run_inference
    from lnr_dist.models.checkpoint import save_checkpoint
    from lnr_dist.models.network import build_model

    cfg = mini_experiment(
        mini_root, tmp_path / "run", data=mini_data_config(mini_root, label_noise=LabelNoiseConfig("symmetric", 0.3)),
        infer={"threshold": 1.0, "batch_size": 96, "save_predictions": True},
        ray={"num_workers": 2, "cpus_per_worker": 0.5, "max_failures": 0},
    ).with_absolute_paths()  # fmt: skip
    torch.manual_seed(0)
    save_checkpoint(cfg.layout.checkpoint("stage1"), {"model": build_model(cfg.model, 10).state_dict()})
    summary = run_inference(cfg)
    train = load_train_split(cfg.data)
    assert np.array_equal(np.load(cfg.layout.infer_file("labels.npy")), train.labels)
    assert summary["counts"] == np.bincount(train.labels, minlength=10).tolist()
    assert summary["label_noise"]["num_noisy"] == int((train.labels != train.clean_labels).sum()) > 0
    table, _ = LNR_FLIPS.flips(LabelContext(cfg, train.labels, None))
    assert np.array_equal(train.labels[table.index], table.source)
    with pytest.raises(UserError, match="the inference job ran on other training labels"):
        LNR_FLIPS.flips(LabelContext(cfg, train.clean_labels, None))
