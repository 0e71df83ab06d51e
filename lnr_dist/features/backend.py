"""The `features` backend of stage 2: a registered method trained on cached stage-1 features in-process and
evaluated like every method, into one folder (results.json, test_logits.npz) — what `lnr-dist stage2` and
`reproduce` run when the method's backend resolves to features; a method with a predict hook (stage2/registry.py)
is scored by its hook instead of a trained head. (The sweep's trials and its chosen threshold train
the same head, heads.train_head, without writing such a folder.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core import config as config_lib
from ..core import storage
from ..core.errors import UserError
from ..core.layout import RunLayout
from ..data.manifest import Manifest
from ..experiment import ExperimentConfig
from ..lnr import FlipTable
from ..stage2.flip_sources import flip_report
from ..stage2.oversample import NotApplicable
from ..stage2.registry import Stage2Method, method_of, stage2_flips
from ..train.calibration import metrics_at
from ..train.scalars import scalars_folder
from ..train.trainer import write_test_logits
from .cache import HeadInputs, head_inputs
from .heads import evaluate_logits, fresh_head_fitter, train_head


def run_on_features(
    cfg: ExperimentConfig, folder: Path, flips: tuple[FlipTable, float | None] | None = None
) -> dict[str, Any]:
    """Train cfg.stage2.method's head on cached features (extracted first when missing), pick the epoch on
    validation, evaluate on test once, and write `folder`/results.json, test_logits.npz, head.pt (the chosen
    epoch's head: iterated LNR predicts the next round with it) and config.yaml. `flips` (a table and its
    threshold) replaces the method's label policy (iterated LNR's rounds, lnr_dist/rounds.py). A
    method's `extra_train` samples (e.g. annotated pool images) join the training set first (recorded under
    results.json's `extra_train`), then its `resample` step runs; one that cannot run on the data writes
    {"not_applicable": why} (a table's n/a). A method with a `predict` hook (nearest neighbours, the linear
    probe) is scored by its hook instead, on its label policy's labels (or `flips`), and evaluated the same way
    (no head.pt). The manifest (loss priors, many/medium/few groups) stays the labelled training split's, so
    every method is grouped alike. Raises UserError for the method's missing inputs (Stage2Method.check_inputs)
    before any work."""
    cfg = cfg.with_absolute_paths()
    method = method_of(cfg)
    method.check_inputs(cfg)
    if (folder / "checkpoints").is_dir():  # a run on images: its results.json belongs to its checkpoints
        raise UserError(f"{folder} holds a stage-2 run on images (checkpoints/): a run on cached features would "
                        "overwrite its results; use another run_dir (or out folder)")  # fmt: skip
    config_lib.save_resolved(cfg, folder)
    inputs = head_inputs(cfg)
    features, labels, manifest = inputs.features, inputs.labels, inputs.manifest
    if method.predict is not None:
        val_logits, test_logits, fields = _predicted(cfg, method, inputs, flips, scalars_folder(cfg, folder))
        return _write_results(folder, method.name, val_logits, test_logits, fields, labels, manifest)
    train_x, train_y, table, extra = features["train"], labels["train"], None, {}
    if method.extra_train is not None:
        added_x, added_y, extra["extra_train"] = method.extra_train(cfg, features, labels)
        # appended rows take dataset indices N.. (beyond the labelled split's), which no flip table names
        train_x = np.concatenate([train_x, added_x.astype(np.float32, copy=False)])
        train_y = np.concatenate([train_y, added_y.astype(np.int64, copy=False)])
    if method.resample is not None:
        try:
            train_x, train_y = method.resample(train_x, train_y, cfg.seed)
        except NotApplicable as exc:
            results = {"method": method.name, "not_applicable": str(exc)}
            storage.write_json(folder / "results.json", results)
            return results
        extra["train_samples"] = {"before": int(labels["train"].size), "after": int(train_y.size)}
    else:  # flips name labelled training rows only
        table, threshold = stage2_flips(cfg, labels["train"]) if flips is None else flips
        extra["flips"] = flip_report(method.name, table, threshold)
    result = train_head(cfg.stage2, method, cfg.stage2.epochs, manifest, {**features, "train": train_x},
                        {**labels, "train": train_y}, inputs.classifier, table, cfg.seed, cfg.tune.objective,
                        tensorboard=scalars_folder(cfg, folder))  # fmt: skip
    with torch.no_grad():
        val_logits, test_logits = (result.head(torch.from_numpy(features[s])) for s in ("val", "test"))
    result.head.save(RunLayout.head(folder))
    fields = {"best_epoch": result.best_epoch, "val": result.best, **extra}
    return _write_results(folder, method.name, val_logits, test_logits, fields, labels, manifest)


def _predicted(
    cfg: ExperimentConfig,
    method: Stage2Method,
    inputs: HeadInputs,
    flips: tuple[FlipTable, float | None] | None,
    tensorboard: Path | None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """A method with a predict hook (e.g. nearest neighbours): its labels (its label policy's flips, or `flips`,
    applied to the training split), its hook, and results.json's fields: validation metrics, the hook's own, its
    flips. A head its hook trains through fit_head writes its scalars to `tensorboard`."""
    labels, manifest = inputs.labels, inputs.manifest
    table, threshold = stage2_flips(cfg, labels["train"]) if flips is None else flips
    train_y = (
        labels["train"] if table is None else table.apply(np.arange(labels["train"].size), labels["train"])
    )
    method_labels = {**labels, "train": train_y}
    fit_head = fresh_head_fitter(cfg.stage2, method, manifest, method_labels, cfg.seed, cfg.tune.objective,
                                 tensorboard)  # fmt: skip
    val, test, own = method.predict(cfg, inputs.features, method_labels, fit_head)
    val_logits, test_logits = (torch.from_numpy(np.asarray(x, np.float32)) for x in (val, test))
    metrics = metrics_at(val_logits, torch.from_numpy(labels["val"]), manifest)
    # what the results own; a hook may report a best_epoch (the linear probe's), None otherwise
    owned = {"val", "flips", "method", "trained_on", "test", "test_calibrated", "temperature", "manifest"}
    if owned & set(own):
        raise ValueError(f"method {method.name}: its predict hook returned fields the results own: "
                         f"{sorted(owned & set(own))}")  # fmt: skip
    val_metrics = {k: v for k, v in metrics.items() if k != "per_class_acc"}
    fields = {
        "best_epoch": None,
        "val": val_metrics,
        **own,
        "flips": flip_report(method.name, table, threshold),
    }
    return val_logits, test_logits, fields


def _write_results(
    folder: Path, name: str, val_logits: torch.Tensor, test_logits: torch.Tensor, fields: dict[str, Any],
    labels: dict[str, np.ndarray], manifest: Manifest,
) -> dict[str, Any]:  # fmt: skip
    """Test metrics before and after temperature scaling; test_logits.npz, then results.json."""
    evaluation = evaluate_logits(val_logits, test_logits, labels, manifest)
    results = {"method": name, "trained_on": "cached features", **fields, **evaluation,
               "manifest": manifest.to_dict()}  # fmt: skip
    # feature rows are dataset indices of the split (features/cache.py)
    write_test_logits(folder, test_logits.numpy(), labels["test"], np.arange(labels["test"].size),
                      evaluation["temperature"])  # fmt: skip
    storage.write_json(folder / "results.json", results)
    return results
