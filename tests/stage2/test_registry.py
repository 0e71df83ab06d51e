"""The stage-2 method registry: lookups, plugins, the settings it replaced, backend choice, and that no module
outside the registry switches on a method's name."""

from __future__ import annotations

import ast
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lnr_dist.core.config import ConfigError, load_config
from lnr_dist.core.errors import UserError
from lnr_dist.data.manifest import Manifest
from lnr_dist.experiment import ExperimentConfig, ThresholdPolicy
from lnr_dist.features import heads
from lnr_dist.models.network import build_model
from lnr_dist.reproduce.methods import steps_of
from lnr_dist.stage2.registry import (
    STAGE2_METHODS,
    Stage2Method,
    get_method,
    load_plugins,
    method_of,
    register,
    reproduce_methods,
    stage2_threshold,
)
from lnr_dist.train import recipes

REPO = Path(__file__).resolve().parents[2]
MINI = REPO / "configs" / "mini.yaml"
BUILT_IN = ("ce", "mixup", "mislas", "lnr", "random", "smote", "adasyn")
POOL_METHODS = ("mining", "mining_random")  # registered later; the switch detector looks for them too


def mini(*overrides: str) -> ExperimentConfig:
    return load_config(ExperimentConfig, MINI, list(overrides))


def test_the_built_in_methods_are_registered_in_order():
    assert tuple(STAGE2_METHODS)[: len(BUILT_IN)] == BUILT_IN


def test_an_unknown_method_is_one_line_listing_the_valid_names():
    with pytest.raises(UserError) as error:
        method_of(mini("stage2.method=focal"))
    message = str(error.value)
    assert message.startswith("stage2.method: unknown method 'focal'; valid: ce, mixup, mislas, lnr")
    assert "\n" not in message
    cfg = mini("reproduce.methods=[lnr, focal]")
    with pytest.raises(UserError, match=r"^reproduce.methods: unknown method 'focal'; valid: "):
        reproduce_methods(cfg)
    with pytest.raises(UserError, match=r"^reproduce.baselines: unknown method 'nope'"):
        reproduce_methods(mini("reproduce.baselines=[nope]"))


def test_empty_reproduce_methods_means_every_registered_method():
    names = [m.name for m in reproduce_methods(mini("reproduce.methods=[]"))]
    assert names == list(STAGE2_METHODS)


@pytest.mark.parametrize(
    "override, new_key",
    [
        ("tune.cached_features=never", "stage2.backend"),
        ("reproduce.stage2_on=features", "stage2.backend"),
        ("stage2.balanced_sampling=false", "stage2.sampler"),
    ],
)
def test_the_replaced_settings_are_refused_naming_the_new_key(override, new_key):
    with pytest.raises(ConfigError) as error:
        mini(override)
    key = override.split("=")[0]
    assert f"key '{key}' was replaced: use {new_key}" in str(error.value)
    assert "command line" in str(error.value) and "\n" not in str(error.value)


def test_the_balanced_sampling_refusal_says_what_its_values_became(tmp_path):
    text = MINI.read_text().replace("stage2:\n", "stage2:\n  balanced_sampling: true\n", 1)
    path = tmp_path / "old.yaml"
    path.write_text(text)
    line = text.splitlines().index("  balanced_sampling: true") + 1
    with pytest.raises(ConfigError) as error:
        load_config(ExperimentConfig, path)
    message = str(error.value)
    assert message.startswith(
        f"{path}:{line}: key 'stage2.balanced_sampling' was replaced: use stage2.sampler"
    )
    assert "true was mean, false was random" in message and "\n" not in message


def test_stage2_sampler_is_checked_and_defaults_to_mean():
    assert mini().stage2.sampler == "mean" and mini("stage2.sampler=reverse").stage2.sampler == "reverse"
    with pytest.raises(ConfigError, match=r"stage2.sampler.*'balanced'") as error:
        mini("stage2.sampler=balanced")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "method, configured, resolved",
    [
        ("mislas", "mean", "mean"),
        ("lnr", "reverse", "reverse"),
        ("random", "random", "random"),
        ("smote", "mean", "random"),  # oversampled features are balanced already: the method fixes random
        ("adasyn", "reverse", "random"),
    ],
)
def test_a_method_samples_with_its_own_sampler_or_stage2_sampler(method, configured, resolved):
    s2 = mini(f"stage2.sampler={configured}").stage2
    assert get_method(method).sampler_of(s2) == resolved


def test_a_method_with_an_unknown_sampler_is_refused():
    with pytest.raises(
        ValueError, match=r"method focal: unknown sampler 'balanced'; valid: config, random, mean"
    ):
        Stage2Method("focal", "a loss", sampler="balanced")


def test_the_head_trains_with_the_method_sampler(monkeypatch):
    seen = []

    def order(labels, sampler, seed, epoch):
        seen.append(sampler)
        return np.arange(len(labels))

    monkeypatch.setattr(heads, "sampler_order", order)
    s2 = replace(mini().stage2, sampler="reverse", epochs=1, batch_size=8)
    labels = {"train": np.repeat(np.arange(3), [6, 3, 1]), "val": np.arange(3)}
    features = {"train": np.ones((10, 4), np.float32), "val": np.ones((3, 4), np.float32)}
    classifier = {"classifier.weight": torch.zeros(3, 4), "classifier.bias": torch.zeros(3)}
    manifest = Manifest.from_labels(labels["train"], 3)
    for name in ("mislas", "smote"):
        heads.train_head(s2, get_method(name), 1, manifest, features, labels, classifier, None, 0, "top1")
    assert seen == ["reverse", "random"]


def test_the_stage2_recipe_hands_the_method_sampler_to_the_loader(tmp_path, monkeypatch):
    cfg = mini(f"run_dir={tmp_path}", "stage2.method=mislas", "stage2.sampler=reverse")
    monkeypatch.setattr(
        recipes, "load_model", lambda model_cfg, num_classes, *_: build_model(model_cfg, num_classes)
    )
    labels = np.repeat(np.arange(10), 3)
    recipe = recipes.stage2_recipe(cfg, Manifest.from_labels(labels, 10), labels)
    assert recipe.sampler == "reverse"
    assert recipes.stage1_recipe(cfg, Manifest.from_labels(labels, 10), labels).sampler == "random"


@pytest.mark.parametrize("value", ["tuned", "2.5", "null"])
def test_the_old_scalar_threshold_is_refused_naming_the_policy_keys(value):
    with pytest.raises(ConfigError) as error:
        mini(f"stage2.threshold={value}")
    message = str(error.value)
    assert "key 'stage2.threshold' is a section now" in message
    assert "stage2.threshold.policy=tuned" in message and "stage2.threshold.value=<t>" in message


def test_a_scalar_threshold_in_a_yaml_file_names_its_line(tmp_path):
    text = MINI.read_text().replace("stage2:\n", "stage2:\n  threshold: tuned\n", 1)
    path = tmp_path / "old.yaml"
    path.write_text(text)
    line = text.splitlines().index("  threshold: tuned") + 1
    with pytest.raises(ConfigError, match=rf"old.yaml:{line}: key 'stage2.threshold' is a section now"):
        load_config(ExperimentConfig, path)


def test_threshold_policy_value_goes_with_fixed_only():
    assert mini("stage2.threshold.policy=fixed", "stage2.threshold.value=2.5").stage2.threshold == (
        ThresholdPolicy.fixed(2.5)
    )
    with pytest.raises(ConfigError, match="threshold.value goes with threshold.policy: fixed"):
        mini("stage2.threshold.policy=fixed")
    with pytest.raises(ConfigError, match="threshold.value goes with threshold.policy: fixed"):
        mini("stage2.threshold.value=2.5")


def test_the_threshold_policy_resolves_without_rewriting_the_config(tmp_path):
    cfg = mini(f"run_dir={tmp_path}")
    assert stage2_threshold(cfg) is None  # infer: the inference job's own flips
    fixed = mini(f"run_dir={tmp_path}", "stage2.threshold.policy=fixed", "stage2.threshold.value=3")
    assert stage2_threshold(fixed) == 3.0
    tuned = mini(f"run_dir={tmp_path}", "stage2.threshold.policy=tuned")
    with pytest.raises(UserError, match=r"policy is tuned but .*chosen_threshold.json does not exist"):
        stage2_threshold(tuned)
    tuned.layout.tune.mkdir(parents=True)
    tuned.layout.chosen_threshold.write_text('{"threshold": 2.5}')
    assert stage2_threshold(tuned) == 2.5 and tuned.stage2.threshold == ThresholdPolicy("tuned")


def test_reproduce_runs_a_tuned_method_at_the_tuned_policy_and_says_so_in_its_config():
    cfg = mini()
    lnr = get_method("lnr").run_config(cfg)
    assert lnr.stage2.method == "lnr" and lnr.stage2.threshold == ThresholdPolicy("tuned")
    mislas = get_method("mislas").run_config(cfg)
    assert mislas.stage2.threshold == cfg.stage2.threshold  # a method without a threshold keeps the config's
    ce = get_method("ce").run_config(cfg)
    assert ce.stage1.mixup_alpha == 0 and Path(ce.run_dir) == Path(cfg.run_dir) / "ce"


@pytest.mark.parametrize(
    "method, backend, shift_bn, run, sweep",
    [
        ("lnr", "auto", False, "images", "features"),
        ("lnr", "auto", True, "images", "images"),
        ("lnr", "features", False, "features", "features"),
        ("lnr", "images", False, "images", "images"),
        ("smote", "auto", False, "features", "features"),
        ("smote", "images", False, "features", "features"),  # a method with one backend runs on it
    ],
)
def test_backend_choice(method, backend, shift_bn, run, sweep):
    s2 = replace(mini().stage2, backend=backend, shift_bn=shift_bn)
    assert get_method(method).backend(s2) == run
    assert get_method(method).backend(s2, "sweep") == sweep


def test_features_backend_cannot_shift_bn():
    with pytest.raises(ConfigError, match="backend features .* cannot shift BN"):
        mini("stage2.backend=features", "stage2.shift_bn=true")


@pytest.mark.parametrize(
    "method, backend, steps",
    [
        ("ce", "auto", ["stage1_ce"]),
        ("mixup", "auto", ["stage1"]),
        ("mislas", "auto", ["stage1"]),
        ("mislas", "features", ["stage1", "features"]),
        ("lnr", "auto", ["stage1", "infer", "tune"]),
        ("random", "features", ["stage1", "infer", "tune", "features"]),
        ("smote", "auto", ["stage1", "features"]),
        ("bias_compensation", "auto", ["stage1_bias_compensation"]),
        ("bias_compensation", "features", ["stage1_bias_compensation", "features_bias_compensation"]),
        ("range_loss", "auto", ["stage1_range_loss"]),
    ],
)
def test_a_methods_shared_steps_follow_from_its_declaration(method, backend, steps):
    cfg = mini(f"stage2.backend={backend}")
    assert [s.name for s in steps_of(get_method(method), cfg)] == steps


@pytest.mark.parametrize("name", ["bias_compensation", "range_loss"])
def test_the_stage1_loss_methods_run_mislas_stage2_on_their_own_backbone(name):
    cfg = mini()
    method = get_method(name)
    run = method.run_config(cfg)
    assert method.stage1 == name and Path(run.run_dir) == Path(cfg.run_dir) / name
    mislas = get_method("mislas")
    assert (method.labels, method.threshold, method.loss, method.sampler, method.lws, method.retrain) == (
        mislas.labels, mislas.threshold, mislas.loss, mislas.sampler, mislas.lws, mislas.retrain
    )  # fmt: skip
    assert run.stage2 == replace(cfg.stage2, method=name)


def test_a_plugin_that_cannot_be_imported_is_one_line(tmp_path):
    with pytest.raises(
        UserError, match=r"^stage2.plugins: cannot import 'no_such_plugin_xyz' .*PYTHONPATH\)$"
    ):
        load_plugins(["no_such_plugin_xyz"])
    broken = tmp_path / "broken_plugin_xyz.py"
    broken.write_text("raise ValueError('bad plugin')\n")
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(UserError, match="importing 'broken_plugin_xyz' failed: ValueError: bad plugin"):
            load_plugins(["broken_plugin_xyz"])
    finally:
        sys.path.remove(str(tmp_path))


def test_a_plugin_registers_its_method_when_named_in_the_config(tmp_path, monkeypatch):
    (tmp_path / "tiny_plugin_xyz.py").write_text(
        "from lnr_dist.stage2.registry import Stage2Method, register\n"
        "register(Stage2Method('tiny_xyz', 'a test method'))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(STAGE2_METHODS, "tiny_xyz", raising=False)
    cfg = mini("stage2.plugins=[tiny_plugin_xyz]", "stage2.method=tiny_xyz")
    try:
        assert method_of(cfg).description == "a test method"
        with pytest.raises(ValueError, match="'tiny_xyz' is registered already"):
            register(Stage2Method("tiny_xyz", "another"))
    finally:
        STAGE2_METHODS.pop("tiny_xyz", None)
        sys.modules.pop("tiny_plugin_xyz", None)


def _method_names_compared(path: Path) -> list[str]:
    """String constants equal to a built-in method name used in a comparison or as a dict key in `path`."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            values = [node.left, *node.comparators]
            values += [e for v in values if isinstance(v, (ast.Tuple, ast.List, ast.Set)) for e in v.elts]
            found += [
                f"{path.name}:{node.lineno}"
                for v in values
                if isinstance(v, ast.Constant) and v.value in (*BUILT_IN, *POOL_METHODS)
            ]
    return found


def test_no_module_outside_the_registry_switches_on_a_method_name():
    package = REPO / "lnr_dist"
    allowed = {
        package / "stage2" / "registry.py",
        package / "reproduce" / "binary.py",
    }  # binary: its own task
    offenders = [
        hit for path in package.rglob("*.py") if path not in allowed for hit in _method_names_compared(path)
    ]
    assert offenders == []


def test_the_switch_detector_finds_a_switch(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "def f(m):\n    if m == 'lnr':\n        return 1\n    return m in ('smote', 'x') or m != 'mining'\n"
    )
    assert _method_names_compared(sample) == ["sample.py:2", "sample.py:4", "sample.py:4"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ([], "stage2.threshold.policy is infer"),
        (
            ["stage2.method=mislas", "stage2.threshold.policy=tuned"],
            "stage2.method 'mislas' has no threshold to tune",
        ),
    ],
)
def test_launch_pipeline_refuses_a_stage2_that_would_ignore_its_sweep(tmp_path, overrides, message):
    from lnr_dist.launch.submit import LaunchOptions, launch

    cfg = mini(f"run_dir={tmp_path}", *overrides)
    with pytest.raises(UserError, match=message):
        launch("pipeline", cfg, LaunchOptions(cluster="local"))
    assert not (tmp_path / "slurm").exists()  # refused before anything was submitted


def test_a_run_on_features_never_overwrites_a_run_on_images(tmp_path):
    from lnr_dist.features.backend import run_on_features

    folder = tmp_path / "stage2"
    (folder / "checkpoints").mkdir(parents=True)
    with pytest.raises(UserError, match=r"stage2 holds a stage-2 run on images .*use another run_dir"):
        run_on_features(mini(f"run_dir={tmp_path}", "stage2.method=mislas"), folder)
    assert list(folder.iterdir()) == [folder / "checkpoints"]
