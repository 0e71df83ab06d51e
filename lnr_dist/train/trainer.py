"""The one trainer, for stage 1 and stage 2, on Ray Train.

`fit(cfg, stage)` runs on the driver: checks inputs before any worker starts, writes the resolved config, starts a
TorchTrainer. `train_worker` runs on each of W workers: turns its config back into the dataclass, builds the
loaders sharded by global rank and the stage's recipe, resumes from `<stage dir>/checkpoints/last.pt` if it
exists (from `last.prev.pt`, the one before, when last.pt is damaged), trains, evaluates on validation every epoch
(metrics all-reduced), keeps `last.pt` / `best.pt` and their previous versions (rank 0, atomic), and at the end
evaluates the best epoch once on test.

Resuming always goes through that file, whatever stopped the run: `run_workers` restarting a failed worker group
(`ray.max_failures`), a SLURM requeue, or the user starting the same command again. The run folder must therefore
be on storage every worker sees (as on any cluster with a shared filesystem).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch

from ..core import config as config_lib
from ..core import storage
from ..core.dist import RankContext, barrier, gather_arrays
from ..core.errors import UserError
from ..core.progress import Throttle, progress
from ..data.loader import LoaderSpec, build_loader
from ..data.manifest import Manifest
from ..data.pool import load_pool
from ..data.splits import Split, load_split, load_train_split
from ..experiment import ExperimentConfig
from ..models.checkpoint import (
    checkpoint_epoch,
    find_resume_point,
    load_checkpoint,
    previous_path,
    restore_training_state,
    save_checkpoint,
    training_state,
    unwrap,
)
from ..models.losses import set_loss_epoch
from ..runtime.faults import inject_fault
from ..runtime.raycluster import run_workers, worker_setup
from .calibration import fit_temperature, metrics_at
from .engine import (
    UnlabeledStream,
    build_lr_scheduler,
    build_optimizer,
    collect_logits,
    evaluate,
    train_one_epoch,
)
from .metrics import compute_metrics
from .recipes import FlipsOverride, Recipe, build_recipe
from .scalars import EpochScalars, scalars_folder

log = logging.getLogger(__name__)

CSV_FIELDS = (
    "epoch", "lr", "train_loss", "train_acc", "val_top1", "val_balanced_acc", "val_many", "val_medium", "val_few",
    "val_ece", "val_nll", "train_images", "train_seconds", "images_per_second", "unlabeled_loss",
    "pool_confident", "pool_kept",
)  # fmt: skip


def load_splits(cfg: ExperimentConfig) -> dict[str, Split]:
    """The three splits; the training split through `load_train_split`, which refuses empty classes and applies
    data.label_noise (validation and test stay clean)."""
    data = cfg.data
    return {
        "train": load_train_split(data),
        "val": load_split(data.val_split, data.root, data.num_classes, "val"),
        "test": load_split(data.test_split, data.root, data.num_classes, "test"),
    }


def write_test_logits(
    folder: Path, logits: np.ndarray, labels: np.ndarray, indices: np.ndarray, temperature: float
) -> None:
    """`test_logits.npz`, the file every figure and comparison is computed from: logits (N, C) float32 exactly
    as the test metrics saw them (no float16 rounding, so a figure's number equals its table's), labels (N,)
    int64 and indices (N,) int64 (dataset indices of the test split, rows sorted by them), temperature ()."""
    order = np.argsort(indices, kind="stable")
    storage.write_npz(
        folder / "test_logits.npz", logits=logits.astype(np.float32).reshape(indices.size, -1)[order],
        labels=labels.astype(np.int64)[order], indices=indices.astype(np.int64)[order],
        temperature=np.array(temperature, dtype=np.float64),
    )  # fmt: skip


def _check_resumable(cfg: ExperimentConfig, stage: str, out: Path, flips: dict[str, Any] | None) -> None:
    """A run resumes from last.pt only if that checkpoint was made by the same recipe: another stage section
    (other than its epoch count), model or flip table in the same folder is an error, not a silent resume. A
    damaged last.pt falls back to last.prev.pt with a warning naming both (none complete: CheckpointError)."""
    found = find_resume_point(out / "checkpoints", stage)
    if found is None:
        return
    if found.damaged is not None:
        log.warning("%s: %s; resuming from the previous complete checkpoint %s (epoch %d done) instead",
                    out / "checkpoints" / "last.pt", found.damaged, found.path, found.state["epoch"])  # fmt: skip
    state, path = found.state, found.path
    saved, current = state["config"], config_lib.to_dict(cfg)
    # a key added to the recipe after the checkpoint was written reads as its default (what that run used)
    defaults = {section: config_lib.to_dict(type(getattr(cfg, section))()) for section in (stage, "model")}
    differences = [
        f"{section}.{key}"
        for section in (stage, "model")
        for key in sorted(set(saved[section]) | set(current[section]))
        if key not in ("epochs", "checkpoint")
        and saved[section].get(key, defaults[section].get(key)) != current[section].get(key)
    ]
    # the labels it trained on: a checkpoint of other label noise is another run (data.label_noise, absent from
    # checkpoints written before it existed, was off)
    off = config_lib.to_dict(type(cfg.data.label_noise)())
    if saved.get("data", {}).get("label_noise", off) != current["data"]["label_noise"]:
        differences.append("data.label_noise")
    saved_flips = state.get("results_extra", {}).get("flips") or {}
    if flips is not None and saved_flips.get("flips_sha256") != flips.get("flips_sha256"):
        differences.append("the flip table")
    if differences:
        raise UserError(
            f"{path} was written by another {stage} setup ({', '.join(differences)} differ): it would be resumed. "
            "Use another run_dir, or delete that folder to start over."
        )


def preflight(
    cfg: ExperimentConfig, stage: str, out: Path | None = None, flips: FlipsOverride | None = None
) -> dict[str, Split]:
    """Everything that can be checked without workers: split files (and the unlabelled pool when
    data.unlabeled_split is set: its format, labels and no path shared with another split), the model's files,
    batch sizes, and that an existing checkpoint in the output folder belongs to this run."""
    cfg.check_global_batch(f"{stage}.batch_size", f"{stage}.eval_batch_size")
    splits = load_splits(cfg)
    checked = dict(splits)
    if cfg.data.unlabeled_split is not None:
        checked["pool"] = load_pool(cfg.data, splits).split
    for name, split in checked.items():
        missing = next(
            (i for i in range(min(len(split), 50)) if not Path(split.full_path(i)).is_file()), None
        )
        if missing is not None:
            raise UserError(f"{split.where(missing)}: missing file {split.full_path(missing)} ({name} split)")
    labels = splits["train"].labels
    recipe = build_recipe(cfg, stage, Manifest.of_split(splits["train"], cfg.data.num_classes), labels, flips)
    report = recipe.checkpoint_extra.get("results_extra", {}).get("flips")
    _check_resumable(cfg, stage, out or cfg.layout.stage(stage), report)
    return splits


def fit(
    cfg: ExperimentConfig,
    stage: str = "stage1",
    out: Path | None = None,
    callbacks: list | None = None,
    flips: FlipsOverride | None = None,
) -> dict[str, Any]:
    """Run `stage` on Ray Train; returns results.json (best validation epoch and its test metrics).

    `out` replaces the stage's folder <run_dir>/<stage> (sweep trials); `callbacks` go to the TorchTrainer;
    `flips` (stage 2: a flips.npz and its threshold) replaces the method's label policy (iterated LNR's rounds).
    """
    cfg = cfg.with_absolute_paths()
    out = Path(out).resolve() if out is not None else cfg.layout.stage(stage)
    preflight(cfg, stage, out, flips)
    config_lib.save_resolved(cfg, out)
    loop_config = {"config": config_lib.to_dict(cfg), "stage": stage, "out": str(out),
                   "flips": None if flips is None else [str(flips[0]), flips[1]]}  # fmt: skip
    name = stage if out == cfg.layout.stage(stage) else out.name
    run_workers(train_worker, loop_config, cfg.ray, name, cfg.layout.ray, out, callbacks)
    return json.loads((out / "results.json").read_text())


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        # an empty cell is a value the run did not have (no pool, a non-finite metric): left out of the row
        return [{k: (int(v) if k in ("epoch", "train_images") else float(v)) for k, v in row.items() if v}
                for row in csv.DictReader(handle)]  # fmt: skip


def _best_of_resumed_run(path: Path, best: dict[str, Any], start_epoch: int) -> dict[str, Any]:
    """`best` of the checkpoint a run resumes from, with best.pt holding that epoch's model (rank 0).

    After a fall-back to last.prev.pt, best.pt may come from the lost epoch; best.prev.pt then holds the best
    epoch the run resumes with. If neither does, the best epoch is chosen again from start_epoch on, so that
    results.json never names an epoch other than the model it evaluates."""
    if best["epoch"] < 0 or checkpoint_epoch(path) == best["epoch"]:
        return best
    prev = previous_path(path)
    if checkpoint_epoch(prev) == best["epoch"]:
        os.replace(prev, path)
        log.warning("%s was not from the best epoch %d of the resumed run: restored it from %s", path,
                    best["epoch"], prev)  # fmt: skip
        return best
    log.warning("%s does not hold the best epoch %d of the resumed run (damaged or missing): the best epoch is "
                "chosen again from epoch %d on", path, best["epoch"], start_epoch)  # fmt: skip
    return {**best, "value": float("-inf"), "epoch": -1}


def unlabeled_stream(
    cfg: ExperimentConfig, recipe: Recipe, steps: int, per_worker: int, ctx: RankContext, device: torch.device
) -> UnlabeledStream | None:
    """The pool side of a recipe with an unlabelled part (None without one): a loader of part.ratio x
    `per_worker` pool images per step in weak and strong views, for the `steps` steps of the labelled loader
    (whole passes over the pool, reshuffled each pass, sharded by global rank), and the part's consistency
    term on `device`. The pool view it reads carries no labels (data/pool.py)."""
    if recipe.unlabeled is None:
        return None
    part = recipe.unlabeled.part
    pool_batch = part.ratio * per_worker
    spec = LoaderSpec.unlabeled(pool_batch, cfg.seed, steps * pool_batch * ctx.world_size, part.rand_augment)
    loader = build_loader(cfg.data, recipe.unlabeled.pool, spec, ctx)
    return UnlabeledStream(loader, part.consistency.to(device), part.weight)


def train_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train worker loop (every rank runs it); what it opens on the way (rank 0's TensorBoard writer) is
    closed however it ends."""
    with ExitStack() as closing:
        _train(loop_config, closing)


def _train(loop_config: dict[str, Any], closing: ExitStack) -> None:
    cfg = config_lib.from_dict(ExperimentConfig, loop_config["config"], "<ray worker config>")
    stage = loop_config["stage"]
    ctx, device = worker_setup(cfg.ray)
    cuda = device.type == "cuda"
    out = Path(loop_config.get("out") or cfg.layout.stage(stage))
    checkpoints = out / "checkpoints"

    splits = load_splits(cfg)
    manifest = Manifest.of_split(splits["train"], cfg.data.num_classes)
    torch.manual_seed(cfg.seed)  # the initial weights (rank 0's reach every rank through DDP) follow the seed
    override = loop_config.get("flips")
    recipe = build_recipe(
        cfg, stage, manifest, splits["train"].labels, None if override is None else tuple(override)
    )
    train_cfg = recipe.train
    per_worker = train_cfg.batch_size // ctx.world_size
    eval_per_worker = train_cfg.eval_batch_size // ctx.world_size
    amp, channels_last = train_cfg.amp and cuda, train_cfg.channels_last and cuda
    model = recipe.model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if ctx.world_size > 1:
        model = ray.train.torch.prepare_model(model, move_to_device=False)
    optimizer = build_optimizer(recipe.param_groups, train_cfg)
    loss_fn = recipe.loss.to(
        device
    )  # a loss with buffers (label-aware smoothing's epsilon) on the model's device
    train_loader = build_loader(
        cfg.data, splits["train"], LoaderSpec.train(per_worker, cfg.seed, recipe.sampler), ctx
    )
    val_loader = build_loader(cfg.data, splits["val"], LoaderSpec.evaluate(eval_per_worker), ctx)
    unlabeled = unlabeled_stream(cfg, recipe, len(train_loader), per_worker, ctx, device)
    scheduler = build_lr_scheduler(optimizer, train_cfg, len(train_loader))
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    config_dict = config_lib.to_dict(cfg)
    best: dict[str, Any] = {"metric": train_cfg.select_metric, "value": float("-inf"), "epoch": -1}
    start_epoch = 0
    keep_previous = True  # each save keeps the file it replaces as <name>.prev.pt (models/checkpoint.py)
    resumed = find_resume_point(checkpoints, stage)
    if resumed is not None:
        state = resumed.state
        restore_training_state(state, model, optimizer, scheduler, scaler)
        best, start_epoch = state["best"], state["epoch"] + 1
        # a damaged last.pt is overwritten by the next save, never kept as the previous checkpoint
        keep_previous = resumed.damaged is None
        if ctx.is_main:
            best = _best_of_resumed_run(checkpoints / "best.pt", best, start_epoch)
        log.info("resumed %s from %s: epoch %d done", stage, resumed.path, state["epoch"])
    rows = [r for r in _read_rows(out / "metrics.csv") if r["epoch"] < start_epoch]
    scalars = closing.enter_context(
        EpochScalars(scalars_folder(cfg, out) if ctx.is_main else None, start_epoch)
    )
    # each epoch's metrics line at INFO at most every logging.log_every_s (first and last always), else at DEBUG
    summaries = Throttle(cfg.logging.log_every_s)

    for epoch in range(start_epoch, train_cfg.epochs):
        inject_fault(cfg.fault, ctx, epoch, out)
        train_loader.set_epoch(epoch)
        if unlabeled is not None:
            unlabeled.loader.set_epoch(epoch)
        rng = np.random.default_rng([cfg.seed, ctx.rank, epoch])
        set_loss_epoch(loss_fn, epoch, train_cfg.epochs)  # a resumed run's loss starts at its resumed epoch
        on_batch = progress(f"{stage} epoch {epoch + 1}/{train_cfg.epochs}", train_loader.draws, ctx,
                            cfg.logging.log_every_s)  # fmt: skip
        stats = train_one_epoch(
            model, train_loader, optimizer, scheduler, scaler, loss_fn, device, epoch,
            mixup_alpha=train_cfg.mixup_alpha, label_map=recipe.label_map, rng=rng, amp=amp,
            channels_last=channels_last, unlabeled=unlabeled, on_batch=on_batch,
        )  # fmt: skip
        on_batch.close()
        for loader in (train_loader, *([unlabeled.loader] if unlabeled is not None else [])):
            if loader.skipped:
                log.warning("epoch %d: skipped %d undecodable images of %s: %s", epoch, len(loader.skipped),
                            loader.split.file, ", ".join(loader.skipped))  # fmt: skip
        val = compute_metrics(
            evaluate(unwrap(model), val_loader, device, manifest.num_classes, amp=amp, channels_last=channels_last)
            .all_reduced(), manifest,
        )  # fmt: skip
        row = {"epoch": epoch, **stats, **{f"val_{k}": v for k, v in val.items() if k != "per_class_acc"}}
        row["images_per_second"] = stats["train_images"] / max(stats["train_seconds"], 1e-9)
        flips = recipe.checkpoint_extra.get("results_extra", {}).get("flips")
        if flips is not None:
            row["num_flips"] = flips["num_flips"]
        improved = val[train_cfg.select_metric] > best["value"]
        if improved:
            best = {"metric": train_cfg.select_metric, "value": val[train_cfg.select_metric], "epoch": epoch}
        if ctx.is_main:
            state = training_state(
                model, optimizer, scheduler, scaler, epoch, best, config_dict, **recipe.checkpoint_extra
            )
            save_checkpoint(checkpoints / "last.pt", state, keep_previous)
            keep_previous = True
            if improved:
                save_checkpoint(checkpoints / "best.pt", state, keep_previous=True)
            rows.append(row)
            storage.write_csv(out / "metrics.csv", rows, CSV_FIELDS)
            # matplotlib (0.3 s) only here, on rank 0: imported at the top it sat in every worker's start-up
            from ..core.plots import training_curves

            training_curves(rows, out / "training_curves.png", f"{stage} ({cfg.run_dir})")
            scalars.write(epoch, row)
        level = logging.INFO if summaries.due(force=epoch + 1 == train_cfg.epochs) else logging.DEBUG
        log.log(
            level, "%s epoch %d/%d: loss %.4f, val top-1 %.2f, balanced %.2f, few %.2f, ECE %.2f (%.1f img/s)",
            stage, epoch + 1, train_cfg.epochs, stats["train_loss"], val["top1"], val["balanced_acc"],
            val["few"], val["ece"], row["images_per_second"],
        )  # fmt: skip
        if unlabeled is not None:
            log.log(level, "%s epoch %d: pool loss %.4f, confident %.1f%%, kept %.1f%%", stage, epoch + 1,
                     stats["unlabeled_loss"], 100 * stats["pool_confident"], 100 * stats["pool_kept"])  # fmt: skip
        ray.train.report(storage.finite({k: v for k, v in row.items() if isinstance(v, (int, float))}))
        barrier()

    barrier()
    best_state = load_checkpoint(
        checkpoints / "best.pt", advice=f"restore it from a copy, or delete {out} to start over"
    )
    network = unwrap(model)
    network.load_state_dict(best_state["model"])
    # Temperature scaling on validation (beyond the paper): report ECE/NLL before and after it.
    val_logits, val_labels, _ = collect_logits(
        network, val_loader, device, amp=amp, channels_last=channels_last
    )
    temperature = fit_temperature(val_logits, val_labels)
    val_calibrated = metrics_at(val_logits, val_labels, manifest, temperature)
    test = test_calibrated = None
    if train_cfg.evaluate_test:
        test_loader = build_loader(cfg.data, splits["test"], LoaderSpec.evaluate(eval_per_worker), ctx)
        test_logits, test_labels, test_indices = collect_logits(
            network, test_loader, device, amp=amp, channels_last=channels_last
        )
        test = metrics_at(test_logits, test_labels, manifest)
        test_calibrated = metrics_at(test_logits, test_labels, manifest, temperature)
        gathered = [gather_arrays(a.numpy().reshape(-1)) for a in (test_logits, test_labels, test_indices)]
        if ctx.is_main:
            write_test_logits(out, *(np.concatenate(parts) for parts in gathered), temperature)
    if ctx.is_main:
        val_at_best = next((r for r in rows if r["epoch"] == best["epoch"]), {})
        results = {
            "stage": stage,
            "epochs": train_cfg.epochs,
            "best_epoch": best["epoch"],
            "select_metric": best["metric"],
            "val": {k[4:]: v for k, v in val_at_best.items() if k.startswith("val_")},
            "test": test,
            "temperature": temperature,
            "val_calibrated": {k: val_calibrated[k] for k in ("top1", "ece", "nll")},
            "test_calibrated": test_calibrated,
            "manifest": manifest.to_dict(),
            "world_size": ctx.world_size,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **best_state.get("results_extra", {}),
        }
        storage.write_json(out / "results.json", results)
        if test is not None:
            log.info(
                "%s test (best epoch %d): top-1 %.2f, balanced %.2f, many %.2f, medium %.2f, few %.2f, "
                "ECE %.2f -> %.2f after temperature %.2f",
                stage, best["epoch"], test["top1"], test["balanced_acc"], test["many"], test["medium"], test["few"],
                test["ece"], test_calibrated["ece"], temperature,
            )  # fmt: skip
