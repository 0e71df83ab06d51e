"""Config loading: YAML then overrides, errors that name the file, line and key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from lnr_dist.core.config import ConfigError, load_config, load_section, save_resolved


@dataclass(frozen=True)
class Optim:
    lr: float
    momentum: float = 0.9
    schedule: Literal["cosine", "step"] = "cosine"


@dataclass(frozen=True)
class Job:
    name: str
    epochs: int
    optim: Optim
    mixup_alpha: float | None = None
    milestones: tuple[int, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")


def write(tmp_path, text: str):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_yaml_then_overrides(tmp_path):
    path = write(tmp_path, "name: a\nepochs: 3\noptim:\n  lr: 1\n")
    cfg = load_config(Job, path, ["optim.lr=0.05", "milestones=[1, 2]", "mixup_alpha=0.2"])
    assert cfg == Job("a", 3, Optim(0.05), 0.2, (1, 2))
    assert isinstance(load_config(Job, path).optim.lr, float)


def test_flags_sit_between_yaml_and_overrides(tmp_path):
    path = write(tmp_path, "name: a\nepochs: 3\noptim:\n  lr: 1\n")
    cfg = load_config(Job, path, ["epochs=5"], flags={"epochs": 4, "name": "123", "optim.momentum": None})
    assert (cfg.epochs, cfg.name, cfg.optim.momentum) == (5, "123", 0.9)


def test_unknown_key_names_file_line_and_key(tmp_path):
    path = write(tmp_path, "name: a\nepochs: 3\noptim:\n  lr: 1\n  nesterov: true\n")
    with pytest.raises(
        ConfigError, match=r"job\.yaml:5: unknown key 'optim\.nesterov' \(valid keys here: lr"
    ):
        load_config(Job, path)


def test_wrong_type_names_the_line(tmp_path):
    path = write(tmp_path, "name: a\nepochs: three\noptim:\n  lr: 1\n")
    with pytest.raises(ConfigError, match=r"job\.yaml:2: key 'epochs': expected an integer, got 'three'"):
        load_config(Job, path)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=abc", r"command line 'optim.lr': key 'optim.lr': expected a number"),
        ("mixup_alpha=true", r"key 'mixup_alpha': expected float or NoneType"),
        ("optim.schedule=linear", r"expected one of 'cosine', 'step'"),
        ("epochs", r"expected key=value"),
        ("name.first=x", r"'name' is not a section"),
        ("optim=3", r"expected a section"),
    ],
)
def test_bad_overrides(tmp_path, override, message):
    path = write(tmp_path, "name: a\nepochs: 3\noptim:\n  lr: 1\n")
    with pytest.raises(ConfigError, match=message):
        load_config(Job, path, [override])


def test_a_section_reads_only_overrides_of_that_section(tmp_path):
    # Issue 14 case 5: `data check` read `num_classes=3` as a top-level key and dropped it silently.
    path = write(tmp_path, "job:\n  name: a\n  epochs: 3\n  optim:\n    lr: 1\nother: {anything: 1}\n")
    assert load_section(Job, path, "job", ["job.epochs=4", "job.optim.lr=0.5"]) == Job("a", 4, Optim(0.5))
    with pytest.raises(
        ConfigError, match=r"^command line 'epochs': unknown key 'epochs' \(valid keys here: job;"
    ):
        load_section(Job, path, "job", ["epochs=4"])
    with pytest.raises(ConfigError, match=r"^command line 'other.anything': unknown key 'other.anything'"):
        load_section(Job, path, "job", ["other.anything=2"])
    with pytest.raises(ConfigError, match=r"^command line 'job.epoch': unknown key 'job.epoch' \(valid keys"):
        load_section(Job, path, "job", ["job.epoch=4"])


def test_null_where_a_number_is_required(tmp_path):
    path = write(tmp_path, "name: a\nepochs: 3\noptim:\n  lr: null\n")
    with pytest.raises(ConfigError, match=r"job\.yaml:4: key 'optim.lr': expected a number, got None"):
        load_config(Job, path)


def test_missing_required_key(tmp_path):
    path = write(tmp_path, "name: a\noptim:\n  lr: 1\n")
    with pytest.raises(ConfigError, match=r"job\.yaml: missing required key 'epochs'"):
        load_config(Job, path)
    with pytest.raises(ConfigError, match=r"missing required key 'optim.lr'"):
        load_config(Job, write(tmp_path, "name: a\nepochs: 1\noptim:\n  momentum: 0.5\n"))


def test_post_init_errors_are_config_errors(tmp_path):
    path = write(tmp_path, "name: a\nepochs: 0\noptim:\n  lr: 1\n")
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        load_config(Job, path)


def test_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Job, tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Job, write(tmp_path, "name: [a\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(Job, write(tmp_path, "- a\n- b\n"))


def test_resolved_config_round_trips(tmp_path):
    cfg = Job("a", 3, Optim(0.1, schedule="step"), milestones=(2, 3), tags={"k": "v"})
    path = save_resolved(cfg, tmp_path / "run")
    assert load_config(Job, path) == cfg
    assert yaml.safe_load(path.read_text())["optim"]["schedule"] == "step"
