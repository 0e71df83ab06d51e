"""Methods on cached stage-1 features: the classifier head (+ LWS, label-aware smoothing: the stage-2 recipe) is
re-trained on the training features and evaluated like every method (results.json, test_logits.npz).

- mislas / lnr / random with `reproduce.stage2_on: features`: class-balanced batches on the original, LNR-flipped
  or randomly flipped labels (the sweep's trial recipe; features of un-augmented images, the backbone and its BN
  untouched).
- smote / adasyn (imbalanced-learn): the training features oversampled to balanced classes first, then
  instance sampling (the data are balanced already)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core import storage
from ..experiment import ExperimentConfig
from ..features.cache import head_inputs
from ..features.heads import evaluate_logits, train_head
from ..train.trainer import write_test_logits
from .methods import stage2_variant


class NotApplicable(RuntimeError):
    """The method cannot run on this data (reported as n/a in the tables, not as a failure)."""


def oversample(
    features: np.ndarray, labels: np.ndarray, kind: str, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Balanced (features, labels): SMOTE or ADASYN with k = min(5, smallest class - 1) neighbours. A class with
    a single sample has no neighbour to interpolate with: that sample is duplicated first (so it is repeated)."""
    from imblearn.over_sampling import ADASYN, SMOTE

    counts = np.bincount(labels)
    single = np.flatnonzero(counts == 1)
    if single.size:
        rows = np.flatnonzero(np.isin(labels, single))
        features, labels = np.concatenate([features, features[rows]]), np.concatenate([labels, labels[rows]])
    smallest = int(np.bincount(labels)[np.unique(labels)].min())
    k = min(5, smallest - 1)
    sampler = (
        SMOTE(k_neighbors=k, random_state=seed)
        if kind == "smote"
        else ADASYN(n_neighbors=k, random_state=seed)
    )
    try:
        x, y = sampler.fit_resample(features.astype(np.float64), labels)
    except RuntimeError as exc:  # ADASYN: no minority sample has a neighbour of another class
        raise NotApplicable(f"{kind} is not applicable to these features ({str(exc).split('.')[0]})") from exc
    return x.astype(np.float32), y.astype(np.int64)


def head_method(cfg: ExperimentConfig, method: str, folder: Path) -> dict[str, Any]:
    from ..stage2.flip_sources import stage2_flips

    cfg = cfg.with_absolute_paths()
    inputs = head_inputs(cfg)
    features, labels, manifest = inputs.features, inputs.labels, inputs.manifest
    train_x, train_y, flips, extra = features["train"], labels["train"], None, {}
    recipe = cfg.stage2
    if method in ("smote", "adasyn"):
        try:
            train_x, train_y = oversample(features["train"], labels["train"], method, cfg.seed)
        except NotApplicable as exc:
            results = {"method": method, "not_applicable": str(exc)}
            storage.write_json(folder / "results.json", results)
            return results
        recipe = replace(recipe, balanced_sampling=False)
        extra["train_samples"] = {"before": int(labels["train"].size), "after": int(train_y.size)}
    else:
        flips, extra["flips"] = stage2_flips(stage2_variant(cfg, method), labels["train"])
    result = train_head(recipe, recipe.epochs, manifest, {**features, "train": train_x}, {**labels, "train": train_y},
                        inputs.classifier, flips, cfg.seed, cfg.tune.objective)  # fmt: skip
    with torch.no_grad():
        val_logits, test_logits = (result.head(torch.from_numpy(features[s])) for s in ("val", "test"))
    evaluation = evaluate_logits(val_logits, test_logits, labels, manifest)
    results = {"method": method, "trained_on": "cached features", "best_epoch": result.best_epoch,
               "val": result.best, **evaluation, **extra, "manifest": manifest.to_dict()}  # fmt: skip
    # feature rows are dataset indices of the split (features/cache.py)
    write_test_logits(folder, test_logits.numpy(), labels["test"], np.arange(labels["test"].size),
                      evaluation["temperature"])  # fmt: skip
    storage.write_json(folder / "results.json", results)
    return results
