"""The job registry: every config-driven job by name, with the files it reads and writes in the run folder.

One table for the three ways a job runs: here (`lnr-dist stage1 ...`, `jobs/*.py`, `reproduce` locally),
inside an sbatch allocation (launch/ray_allocation.py) and as a submitit task (launch/tasks.py). It sits below
launch/, so a local job never imports submitit; each job imports its stage's package only when it runs, so
loading the table costs nothing (no torch, no Ray).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .experiment import ExperimentConfig


@dataclass(frozen=True)
class Job:
    """One job: `job(cfg, out)` runs it and returns its summary (the dict the CLI prints, JSON-able).

    `out` (a folder path as a string, or None) replaces the stage's default output folder where the job has one
    (stage 2 of several methods in one run, sweep trials); the other jobs ignore it. `reads` and `writes` name
    the job's inputs and outputs relative to `run_dir` (documentation, one line each)."""

    name: str
    run: Callable[[ExperimentConfig, str | None], dict[str, Any]]
    reads: str
    writes: str

    def __call__(self, cfg: ExperimentConfig, out: str | None = None) -> dict[str, Any]:
        record_label_noise(cfg)
        return self.run(cfg, out)


def record_label_noise(cfg: ExperimentConfig) -> dict[str, Any] | None:
    """With data.label_noise on, write what it does to the training labels (pattern, rate, realised rate,
    per-class and [from, to, count] transitions) to <run_dir>/label_noise.json before the job runs; the clean
    labels stay in the split file; with the noise off, a record left by an earlier run is removed. Returns the
    record (None when the noise is off)."""
    from .core import storage
    from .data.splits import load_train_split, noise_record

    cfg = cfg.with_absolute_paths()
    if not cfg.data.label_noise.active:
        cfg.layout.label_noise.unlink(missing_ok=True)
        return None
    record = noise_record(load_train_split(cfg.data), cfg.data.num_classes, transitions=True)
    storage.write_json(cfg.layout.label_noise, record)
    return record


def _stage1(cfg: ExperimentConfig, out: str | None = None) -> dict[str, Any]:
    from .train.trainer import fit

    return fit(cfg, "stage1", out=None if out is None else Path(out))


def _stage2(cfg: ExperimentConfig, out: str | None = None) -> dict[str, Any]:
    """Stage 2 of the registered cfg.stage2.method on its backend: images (Ray Train) or cached features; with
    stage2.rounds > 1 for a method whose labels iterate, iterated LNR's rounds (lnr_dist/rounds.py)."""
    from .core.errors import UserError
    from .stage2.registry import method_of

    method = method_of(cfg)
    if not method.retrain:
        raise UserError(f"stage2.method {method.name!r} has no stage 2 (its result is its stage-1 model): "
                        "run `lnr-dist stage1`, or pick a stage-2 method")  # fmt: skip
    if method.rounds_of(cfg.stage2) > 1:  # iterated LNR: every round in the stage-2 folder, on either backend
        from .rounds import run_rounds

        return run_rounds(
            cfg, Path(out) if out is not None else cfg.with_absolute_paths().layout.stage("stage2")
        )
    if method.backend(cfg.stage2) == "features":
        from .features.backend import run_on_features

        folder = Path(out) if out is not None else cfg.with_absolute_paths().layout.stage("stage2")
        return run_on_features(cfg, folder)
    from .train.trainer import fit

    return fit(cfg, "stage2", out=None if out is None else Path(out))


def _infer(cfg: ExperimentConfig, out: str | None = None) -> dict[str, Any]:
    from .infer.inference import run_inference

    return run_inference(cfg)


def _tune(cfg: ExperimentConfig, out: str | None = None) -> dict[str, Any]:
    from .tune.sweep import run_sweep

    return run_sweep(cfg)


def _features(cfg: ExperimentConfig, out: str | None = None) -> dict[str, Any]:
    from .features.cache import cached_features

    shapes = {name: list(array.shape) for name, array in cached_features(cfg).items()}
    return {"folder": str(cfg.with_absolute_paths().layout.features), "shapes": shapes}


def _mine(cfg: ExperimentConfig, out: str | None = None) -> dict[str, Any]:
    from .features.mine import run_mining

    return run_mining(cfg, None if out is None else Path(out))


JOBS: dict[str, Job] = {
    job.name: job
    for job in (
        Job(
            "stage1",
            _stage1,
            "the data split files (data.root)",
            "stage1/ (checkpoints/{last,best}.pt, metrics.csv, results.json, test_logits.npz, tensorboard/)",
        ),
        Job(
            "infer",
            _infer,
            "the stage-1 checkpoint (infer.checkpoint, else stage1/checkpoints/best.pt)",
            "infer/ (flips.npz, summary.json; predictions.npy, candidates.npz when asked)",
        ),
        Job(
            "tune",
            _tune,
            "infer/ (predictions.npy or candidates.npz), the stage-1 checkpoint (stage2.checkpoint), features/; "
            "with tune.flip_budget infer/candidates.npz only",
            "tune/ (sweep.csv, sweep.md, sweep.png, chosen_threshold.json; trial_t*/, chosen/: a stage-2 run each "
            "on images, only tensorboard/ on features; with tune.flip_budget chosen_threshold.json and sweep.md only)",
        ),
        Job(
            "stage2",
            _stage2,
            "the stage-1 checkpoint (stage2.checkpoint); infer/ for flips, tune/chosen_threshold.json for policy "
            "tuned; features/ on the features backend",
            "stage2/ or `out` (results.json, test_logits.npz, config.yaml, tensorboard/; on images also "
            "checkpoints/{last,best}.pt and metrics.csv)",
        ),
        Job(
            "features",
            _features,
            "the stage-1 checkpoint (stage2.checkpoint), the data split files",
            "features/ ({train,val,test}.npy, pool.npy when data.unlabeled_split is set, meta.json)",
        ),
        Job(
            "mine",
            _mine,
            "features/ (extracted when missing, pool included), the pool file (data.unlabeled_split)",
            "mine/ or `out` (mined.csv, summary.json, precision_recall.png, mined_classes.png, config.yaml)",
        ),
    )
}
