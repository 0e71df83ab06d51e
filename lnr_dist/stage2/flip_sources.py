"""Where stage 2 and the sweep get their flip table: the inference job's outputs in <run_dir>/infer/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..core import storage
from ..core.errors import UserError
from ..experiment import ExperimentConfig
from ..lnr import Candidates, FlipTable, compute_flips, flips_from_candidates, random_flips
from ..lnr.stats import class_prior


def infer_dir(cfg: ExperimentConfig) -> Path:
    return Path(cfg.run_dir) / "infer"


def tuned_threshold(cfg: ExperimentConfig) -> float:
    path = Path(cfg.run_dir) / "tune" / "chosen_threshold.json"
    if not path.is_file():
        raise UserError(f"stage2.threshold is 'tuned' but {path} does not exist: run `lnr-dist tune` first")
    return float(json.loads(path.read_text())["threshold"])


def load_candidates(path: Path) -> tuple[Candidates, np.ndarray, int]:
    with np.load(path, allow_pickle=False) as data:
        found = Candidates(float(data["t_min"]), data["index"], data["label"], data["cls"], data["z"])
        return found, data["prior"], int(data["seed"])


class FlipSource:
    """Re-derives LNR flips for any threshold from the inference job's outputs, without new inference:
    from the sparse candidates when their t_min allows, else from the saved predictions."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.dir = infer_dir(cfg)
        summary_path = self.dir / "summary.json"
        if not summary_path.is_file():
            raise UserError(f"{summary_path} not found: run `lnr-dist infer` first")
        self.summary = json.loads(summary_path.read_text())
        self.seed = int(self.summary["seed"])
        self.candidates = None
        if (self.dir / "candidates.npz").is_file():
            self.candidates, self.prior, _ = load_candidates(self.dir / "candidates.npz")
        self.has_predictions = (self.dir / "predictions.npy").is_file()

    def lowest_threshold(self) -> float:
        return -np.inf if self.has_predictions else (self.candidates.t_min if self.candidates else np.inf)

    def at(self, threshold: float | None) -> tuple[FlipTable, float]:
        """(flip table, threshold) — None means the job's own flips.npz at infer.threshold."""
        if threshold is None:
            return storage.load_flip_table(self.dir / "flips.npz"), float(self.summary["threshold"])
        if self.candidates is not None and threshold >= self.candidates.t_min:
            return flips_from_candidates(self.candidates, self.prior, threshold, self.seed), threshold
        if not self.has_predictions:
            raise UserError(
                f"threshold {threshold} needs {self.dir / 'predictions.npy'} (infer.save_predictions) or "
                f"candidates with t_min <= {threshold} (infer.candidates_t_min)"
            )
        probs = np.load(self.dir / "predictions.npy", mmap_mode="r")
        labels = np.load(self.dir / "labels.npy")
        return compute_flips(probs, labels, None, threshold, self.seed).table, threshold


def stage2_flips(cfg: ExperimentConfig, train_labels: np.ndarray) -> tuple[FlipTable | None, dict[str, Any]]:
    """The flip table of cfg.stage2.method and what the report says about it."""
    method = cfg.stage2.method
    if method == "mislas":
        return None, {"method": method, "num_flips": 0, "threshold": None, "flips_sha256": None}
    threshold = cfg.stage2.threshold
    if threshold == "tuned":
        threshold = tuned_threshold(cfg)
    table, used = FlipSource(cfg).at(threshold)
    if method == "random":
        counts = np.bincount(train_labels, minlength=cfg.data.num_classes)
        indices = np.arange(train_labels.shape[0])
        table = random_flips(train_labels, indices, class_prior(counts), len(table), cfg.seed)
    return table, {
        "method": method,
        "num_flips": len(table),
        "threshold": used,
        "flips_sha256": storage.flip_table_sha256(table),
    }
