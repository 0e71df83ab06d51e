"""The Python API: what the `lnr-dist` commands do, as functions.

    import lnr_dist

    table = lnr_dist.compute_flips(probs, labels, threshold=2.0, seed=0)    # (N, C) softmax -> FlipTable
    cfg = lnr_dist.load_config("configs/mini.yaml", ["run_dir=runs/mine"])  # YAML, then key=value overrides
    lnr_dist.run_job("stage1", cfg)                                         # = `lnr-dist stage1`, here
    lnr_dist.read_results("runs/mine")                                      # a job's, a run's, a reproduce root's

`import lnr_dist` loads this module on first use of one of these names; importing it costs numpy and PyYAML
only. torch and Ray are imported by the functions that need them (load_config: torch; run_job: torch and Ray).

Errors: bad input is a UserError (a ValueError; ConfigError for a config key), with a message that names the file,
line, key or argument; compute_flips raises the pure engine's InputError (a ValueError naming the array) and
ValueError. A distributed run that failed after its restarts is RunFailed (a RuntimeError naming the log).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import yaml

from .core.config import ConfigError
from .core.errors import RunFailed, UserError
from .core.layout import RunLayout
from .jobs import JOBS
from .lnr import (
    FlipTable,
    InputError,
    check_inputs,
    check_threshold,
    class_list,
    default_chunk_rows,
    empty_classes,
)
from .lnr import compute_flips as _flip_engine

if TYPE_CHECKING:
    from .experiment import ExperimentConfig
    from .stage2.registry import Stage2Method

__all__ = [
    "ConfigError",
    "FlipTable",
    "InputError",
    "RunFailed",
    "Stage2Method",
    "UserError",
    "compute_flips",
    "load_config",
    "read_results",
    "register_method",
    "run_job",
    "run_reproduce",
]


def compute_flips(
    probs: npt.ArrayLike,
    labels: npt.ArrayLike,
    threshold: float,
    seed: int = 0,
    indices: npt.ArrayLike | None = None,
    *,
    allow_empty_classes: bool = False,
) -> FlipTable:
    """LNR's flips from averaged softmax outputs, in this process (what `lnr-dist flips` computes, no files).

    The rule of the paper (Sec. 3, lnr_dist/lnr/flips.py): z-score each class's probability over the samples not
    labelled with it; a sample of class c may move to a rarer class k with rate tanh(z_ik - threshold) *
    (prior_k - prior_c), drawn with a uniform keyed by (seed, dataset index, k), so the table does not depend on
    the order of the rows or on how they are split.

    Args:
        probs: (N, C) float16/float32/float64 softmax probabilities (rows sum to 1), averaged over inference
            passes; a memory-mapped .npy stays on disk (scanned in blocks).
        labels: (N,) integer labels in [0, C).
        threshold: the z-score threshold t (a finite number; no unit: standard deviations).
        seed: seed of the uniform draws, in [0, 2**63).
        indices: (N,) unique non-negative integer dataset indices of the rows (default: arange(N)).
        allow_empty_classes: run even when a class of the C columns has no sample in `labels` (the paper's
            prior makes an empty class the rarest, so samples move into it); refused by default.

    Returns:
        FlipTable: parallel (F,) int64 arrays sorted by `index` (unique): sample `index[j]` moves from class
        `source[j]` to class `target[j]`. `table.apply(batch_indices, batch_labels)` relabels a batch;
        `table.flip_matrix(C)` is the (C, C) count of flips; F = 0 is a valid result.

    Raises:
        InputError (a ValueError; `.name` is "probs", "labels" or "indices"): wrong shape or dtype, labels out of
            range, indices repeated or negative, NaN/inf or values outside [0, 1], rows not summing to 1 (logits),
            an empty class (unless `allow_empty_classes`).
        ValueError: a threshold that is not a finite number, a seed outside [0, 2**63).
    """
    threshold = check_threshold(threshold)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    probs = probs if isinstance(probs, np.ndarray) else np.asarray(probs)
    labels = np.asarray(labels)
    indices = None if indices is None else np.asarray(indices)
    num_classes = probs.shape[1] if probs.ndim == 2 else 1
    check_inputs(probs, labels, indices, default_chunk_rows(num_classes))
    empty = empty_classes(np.bincount(labels.astype(np.int64), minlength=num_classes))
    if empty.size and not allow_empty_classes:
        raise InputError(
            "labels",
            f"class(es) {class_list(empty)} of the {num_classes} columns of probs have no sample in labels: "
            "LNR's prior would make an empty class the rarest and move samples into it (pass "
            "allow_empty_classes=True to run the rule as written)",
        )
    return _flip_engine(probs, labels, indices, threshold, int(seed)).table


def load_config(path: str | Path | None = None, overrides: Sequence[str] | str = ()) -> ExperimentConfig:
    """The experiment config of every job: a YAML file (configs/*.yaml), then `dotted.key=value` overrides.

    Args:
        path: the YAML file; None for the defaults only (then `data.*` must come from `overrides`).
        overrides: `key=value` strings as on the command line (`stage2.lr=0.05`, `run_dir=runs/x`); values are
            parsed as YAML (numbers, `null`, lists). One string is one override.

    Returns:
        The frozen ExperimentConfig (lnr_dist.experiment; sections data, model, stage1, infer, stage2, tune, ray,
        fault, reproduce, mining). Relative paths stay relative to the current folder (jobs resolve them when they run).
        `lnr_dist.core.config.to_yaml(cfg)` prints it; `dataclasses.replace` derives another.

    Raises:
        ConfigError (a UserError): a missing or unreadable file, an unknown, renamed or missing key, a value of
        the wrong type, a bad combination; the message names the file and line (or the override) and the key.
    """
    from .core import config as config_lib
    from .experiment import ExperimentConfig

    overrides = [overrides] if isinstance(overrides, str) else list(overrides)
    return config_lib.load_config(ExperimentConfig, path, overrides)


def run_job(name: str, cfg: ExperimentConfig, out: str | Path | None = None) -> dict[str, Any]:
    """Run one job of the pipeline in this process, as `lnr-dist <name>` does outside an sbatch allocation.

    The jobs (lnr_dist.jobs.JOBS) read and write the run folder cfg.run_dir (lnr_dist.core.layout):
        stage1    trains stage 1 -> stage1/; returns its results.json (best_epoch; val, test, test_calibrated:
                  top1, balanced_acc, many, medium, few and ece in %, nll in nats; temperature, manifest, ...).
        infer     averaged softmax + LNR flips over the training set -> infer/; returns summary.json
                  (num_flips, counts, counts_after, flip_pairs, groups, world_size, images_per_second, ...).
        tune      the threshold sweep -> tune/; returns chosen_threshold.json (threshold, objective, chosen,
                  the chosen threshold's test metrics, ...).
        stage2    stage 2 of cfg.stage2.method on its backend (stage2.backend) -> stage2/; returns its
                  results.json (like stage1's, plus flips: method, num_flips, threshold).
        features  cached stage-1 features -> features/; returns {"folder": path, "shapes": {split: shape}}.
        mine      minority-class mining of the pool (data.unlabeled_split) against its baselines -> mine/;
                  returns summary.json (budget, pool_size, pool_fraction, precision_at_k: {ranker: {tail,
                  medium, few}}, mined_class_counts, files, ...).
    Each job resumes from what it finds in the run folder (checkpoints, finished steps).

    Ray: the jobs run their workers on Ray (Ray Train, Ray Tune). With cfg.ray.address null and no Ray
    initialised in this process, the first job starts a local Ray cluster in it (ray.init; it stays up until
    the process exits or ray.shutdown()); with an address it joins that cluster; an initialised Ray is reused.
    Inside an sbatch allocation use `lnr-dist <name>` (it spans the allocation) or `lnr-dist launch`.

    Stage-2 methods are looked up in the registry after importing cfg.stage2.plugins. A method added with
    register_method() exists in this process only: Ray workers and Tune trials import stage2.plugins, so a
    method they train must be registered by a module named there.

    Args:
        name: stage1, infer, tune, stage2, features or mine.
        cfg: from load_config().
        out: stage1, stage2 and mine only: write into this folder instead of stage1/, stage2/ or mine/ (other
            jobs ignore it).

    Returns:
        The job's summary (above): a JSON-able dict, what the command prints.

    Raises:
        UserError: an unknown job name (the message lists the valid ones), bad input found before or during the
            run (missing data files or checkpoint, batch sizes that do not divide over ray.num_workers, a method
            without stage 2, workers that cannot fit the cluster, an unreachable ray.address, ...).
        RunFailed: workers failed for another reason after ray.max_failures restarts (names the error log).
    """
    job = JOBS.get(name)
    if job is None:
        raise UserError(f"unknown job {name!r}; valid: {', '.join(JOBS)}")
    return job(cfg, None if out is None else str(out))


def run_reproduce(cfg: ExperimentConfig) -> dict[str, Any]:
    """Every method of reproduce.methods (empty: all registered) over reproduce.seeds seeds, then the tables and
    figures, in this process on Ray (as run_job; `lnr-dist reproduce --cluster slurm` submits each step to
    SLURM instead). Resumable: a step whose inputs did not change since it finished is skipped.

    Writes below cfg.run_dir: seed<k>/ (one run folder per seed), results.md, results.csv,
    results_per_seed.csv, comparisons.csv, figures/, reproduce_config.yaml; read_results(cfg.run_dir) reads
    them back.

    Returns:
        {"results_md", "results_csv", "comparisons_csv": paths (str), "figures": [paths], "table": {method:
        {"seeds": n, metric: (mean, std) or None}}, "ran": ["seed<k>/<step>", ...], "skipped": [...]}.

    Raises:
        UserError: bad config, unknown method names, missing data (checked before any job starts).
        lnr_dist.reproduce.steps.StepFailed (a RuntimeError): a step failed; RunFailed: workers failed.
    """
    from .reproduce.runner import reproduce

    return reproduce(cfg)


def register_method(method: Stage2Method, replace_existing: bool = False) -> Stage2Method:
    """Add a stage-2 method to the registry of this process (lnr_dist.stage2.registry.STAGE2_METHODS), so
    stage2.method and reproduce.methods accept its name.

    `lnr_dist.Stage2Method(name, description, labels=..., threshold="none"|"fixed"|"tuned", backends=...,
    loss=..., sampler=..., lws=..., resample=..., stage1="mixup"|"ce", retrain=True, unlabeled=None)` describes
    it (unlabeled: e.g. lnr_dist.stage2.registry.fixmatch, FixMatch on the pool of data.unlabeled_split); label
    policies are in lnr_dist.stage2.flip_sources (ORIGINAL_LABELS, LNR_FLIPS, RANDOM_FLIPS). For methods that
    run on Ray workers, register from a module named in stage2.plugins (see run_job).

    Returns:
        `method`.

    Raises:
        ValueError: the name is registered already with another definition (unless `replace_existing`).
    """
    from .stage2.registry import register

    return register(method, replace_existing=replace_existing)


def __getattr__(name: str) -> Any:
    # the registry imports torch: Stage2Method is loaded when asked for, not with this module
    if name == "Stage2Method":
        from .stage2.registry import Stage2Method

        return Stage2Method
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def read_results(path: str | Path) -> dict[str, Any]:
    """What a finished job, run or reproduce left on disk, as plain dicts (no torch, no Ray).

    `path` is one of (checked in this order):
        a reproduce root (reproduce_config.yaml): {"config": the saved config as a dict,
            "methods": {method: {seed: its results.json}}, "summary": rows of results.csv (mean and std over
            seeds per method), "per_seed": rows of results_per_seed.csv, "comparisons": rows of comparisons.csv,
            "tune": {seed: chosen_threshold.json}, "binary": {seed: binary results.json}} (the last two where
            present). A root copied elsewhere reads from the copy.
        a job's folder with results.json (stage1/, stage2/, methods/<name>/, a job's `out`): that dict.
        a job's folder with summary.json (infer/, the flips job's out): that dict.
        a tune/ folder: {"chosen_threshold": chosen_threshold.json, "sweep": rows of sweep.csv}.
        a run folder (cfg.run_dir, a reproduce seed folder): whichever of {"stage1", "stage2": results.json,
            "infer": summary.json, "tune": as a tune/ folder, "methods": {method: results.json}, "binary"} exist.
    CSV rows are dicts by column; numbers are int or float, empty cells None.

    Raises:
        UserError: not a folder, nothing readable there (one line naming what was looked for), or a file that is
        not valid JSON / YAML.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder (give a job's folder, a run folder or a reproduce root)")
    layout = RunLayout(folder)
    if layout.report_file("reproduce_config.yaml").is_file():
        return _reproduce_results(layout)
    for file in (RunLayout.results(folder), RunLayout.summary(folder)):
        if file.is_file():
            return _read_json(file)
    parent = RunLayout(folder.parent)
    if parent.tune == folder and parent.chosen_threshold.is_file():
        return _tune_results(parent)
    found = _run_results(layout)
    if not found:
        raise UserError(
            f"{folder}: no results here: looked for results.json or summary.json (a job's folder), "
            "chosen_threshold.json (a tune folder), stage1/, stage2/, infer/, tune/ or methods/ results (a run "
            "folder) and reproduce_config.yaml (a reproduce root)"
        )
    return found


def _run_results(layout: RunLayout) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for stage in ("stage1", "stage2"):
        if RunLayout.results(layout.stage(stage)).is_file():
            found[stage] = _read_json(RunLayout.results(layout.stage(stage)))
    if RunLayout.summary(layout.infer).is_file():
        found["infer"] = _read_json(RunLayout.summary(layout.infer))
    if layout.chosen_threshold.is_file():
        found["tune"] = _tune_results(layout)
    if layout.methods.is_dir():
        methods = {
            folder.name: _read_json(RunLayout.results(folder))
            for folder in sorted(layout.methods.iterdir())
            if RunLayout.results(folder).is_file()
        }
        if methods:
            found["methods"] = methods
    if layout.binary_results.is_file():
        found["binary"] = _read_json(layout.binary_results)
    return found


def _tune_results(layout: RunLayout) -> dict[str, Any]:
    sweep = _read_csv(layout.sweep_csv) if layout.sweep_csv.is_file() else []
    return {"chosen_threshold": _read_json(layout.chosen_threshold), "sweep": sweep}


def _reproduce_results(root: RunLayout) -> dict[str, Any]:
    config_file = root.report_file("reproduce_config.yaml")
    try:
        config = yaml.safe_load(config_file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{config_file}: not valid YAML: {exc}") from exc
    saved_root = Path(config.get("run_dir") or root.root)
    first_seed = int(config.get("seed", 0))
    reproduce = config.get("reproduce") or {}
    seeds = range(first_seed, first_seed + int(reproduce.get("seeds", 1)))

    def rows(name: str) -> list[dict[str, Any]]:
        file = root.report_file(name)
        return _read_csv(file) if file.is_file() else []

    per_seed = rows("results_per_seed.csv")
    methods: dict[str, dict[int, dict[str, Any]]] = {}
    for row in per_seed:
        source = _relocated(Path(str(row["source"])), saved_root, root.root)
        if source.is_file():
            methods.setdefault(str(row["method"]), {})[int(row["seed"])] = _read_json(source)
    if not per_seed:  # the report is not written yet: the stage-2 methods that finished (methods/<name>/)
        for name in reproduce.get("methods") or ():
            for seed in seeds:
                file = RunLayout.results(root.seed(seed).method(name))
                if file.is_file():
                    methods.setdefault(name, {})[seed] = _read_json(file)
    found: dict[str, Any] = {
        "config": config,
        "methods": methods,
        "summary": rows("results.csv"),
        "per_seed": per_seed,
        "comparisons": rows("comparisons.csv"),
    }
    tune = {s: _tune_results(root.seed(s)) for s in seeds if root.seed(s).chosen_threshold.is_file()}
    binary = {
        s: _read_json(root.seed(s).binary_results) for s in seeds if root.seed(s).binary_results.is_file()
    }
    found.update({k: v for k, v in (("tune", tune), ("binary", binary)) if v})
    return found


def _relocated(source: Path, saved_root: Path, root: Path) -> Path:
    """A path the report recorded under the run's saved run_dir, moved under `root` (the folder as found now)."""
    try:
        moved = root / source.relative_to(saved_root)
    except ValueError:
        return source
    return moved if moved.is_file() else source


def _read_json(file: Path) -> dict[str, Any]:
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{file}: not valid JSON ({exc}); the job that writes it may have been interrupted"
        ) from exc


def _read_csv(file: Path) -> list[dict[str, Any]]:
    with file.open(newline="") as handle:
        return [{key: _cell(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def _cell(text: str | None) -> Any:
    """A CSV cell as written by core.storage.write_csv: empty -> None, numbers -> int/float, else the text."""
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    return (
        number if math.isfinite(number) else text
    )  # 'nan' / 'inf' are names here: write_csv leaves numbers blank
