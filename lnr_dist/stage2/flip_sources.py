"""The label policies of stage-2 methods: which flip table a method trains on, made from the inference job's
outputs in <run_dir>/infer/ (RunLayout) at the threshold the run's threshold policy gives."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core import storage
from ..core.errors import UserError
from ..core.layout import RunLayout
from ..experiment import ExperimentConfig
from ..lnr import Candidates, FlipTable, compute_flips, flips_from_candidates, random_flips
from ..lnr.stats import class_prior


def tuned_threshold(layout: RunLayout) -> float:
    """The threshold `lnr-dist tune` chose (tune/chosen_threshold.json). Raises UserError when it is missing."""
    path = layout.chosen_threshold
    if not path.is_file():
        raise UserError(
            f"stage2.threshold.policy is tuned but {path} does not exist: run `lnr-dist tune` first"
        )
    return float(json.loads(path.read_text())["threshold"])


def load_candidates(path) -> tuple[Candidates, np.ndarray, int]:
    """(candidates, (C,) prior, seed) of a candidates.npz the inference job wrote."""
    with np.load(path, allow_pickle=False) as data:
        found = Candidates(float(data["t_min"]), data["index"], data["label"], data["cls"], data["z"])
        return found, data["prior"], int(data["seed"])


class FlipSource:
    """Re-derives LNR flips for any threshold from the inference job's outputs, without new inference:
    from the sparse candidates when their t_min allows, else from the saved predictions."""

    def __init__(self, layout: RunLayout) -> None:
        self.layout = layout
        summary_path = layout.infer_file("summary.json")
        if not summary_path.is_file():
            raise UserError(f"{summary_path} not found: run `lnr-dist infer` first")
        self.summary = json.loads(summary_path.read_text())
        self.seed = int(self.summary["seed"])
        self.round = int(self.summary.get("round", 1))  # iterated LNR's re-predictions draw from their round
        self.candidates = None
        if layout.infer_file("candidates.npz").is_file():
            self.candidates, self.prior, _ = load_candidates(layout.infer_file("candidates.npz"))
        self.has_predictions = layout.infer_file("predictions.npy").is_file()

    def check_labels(self, train_labels: np.ndarray) -> None:
        """UserError when the inference job ran on other training labels than `train_labels` ((N,) int64; an
        empty array skips the check): its predictions and flips belong to another split or data.label_noise.
        Summaries written before the job recorded its labels' sha256 are taken as they are."""
        expected = self.summary.get("train_labels_sha256")
        if expected is None or not np.asarray(train_labels).size:
            return
        if storage.sha256_arrays(np.asarray(train_labels, dtype=np.int64)) != expected:
            raise UserError(
                f"{self.layout.infer_file('summary.json')}: the inference job ran on other training labels than "
                "this run's (data.train_split or data.label_noise changed since): run `lnr-dist infer` again"
            )

    def lowest_threshold(self) -> float:
        return -np.inf if self.has_predictions else (self.candidates.t_min if self.candidates else np.inf)

    def at(self, threshold: float | None) -> tuple[FlipTable, float]:
        """(flip table, threshold) — None means the job's own flips.npz at infer.threshold."""
        if threshold is None:
            return storage.load_flip_table(self.layout.infer_file("flips.npz")), float(
                self.summary["threshold"]
            )
        if self.candidates is not None and threshold >= self.candidates.t_min:
            return flips_from_candidates(
                self.candidates, self.prior, threshold, self.seed, self.round
            ), threshold
        if not self.has_predictions:
            raise UserError(
                f"threshold {threshold} needs {self.layout.infer_file('predictions.npy')} (infer.save_predictions) "
                f"or candidates with t_min <= {threshold} (infer.candidates_t_min)"
            )
        probs = np.load(self.layout.infer_file("predictions.npy"), mmap_mode="r")
        labels = np.load(self.layout.infer_file("labels.npy"))
        return compute_flips(probs, labels, None, threshold, self.seed, round=self.round).table, threshold


@dataclass(frozen=True)
class LabelContext:
    """What a label policy sees: the run's config, the training labels ((N,) int64, row i = dataset index i)
    and the threshold (a float; None = the inference job's own flips at infer.threshold)."""

    cfg: ExperimentConfig
    train_labels: np.ndarray
    threshold: float | None


@dataclass(frozen=True)
class LabelPolicy:
    """How a method's training labels are made. `flips(ctx)` returns (flip table or None for the original
    labels, the threshold used or None). `reads_inference`: it needs the inference job's outputs (so
    `reproduce` runs stage 1 and inference first). `iterates`: stage2.rounds > 1 flips again from each
    round's model (iterated LNR, lnr_dist/rounds.py); a policy that does not iterate runs once whatever
    stage2.rounds says."""

    name: str
    flips: Callable[[LabelContext], tuple[FlipTable | None, float | None]]
    reads_inference: bool
    iterates: bool = False


def _original(ctx: LabelContext) -> tuple[None, None]:
    return None, None


def _lnr(ctx: LabelContext) -> tuple[FlipTable, float]:
    source = FlipSource(ctx.cfg.layout)
    source.check_labels(ctx.train_labels)
    return source.at(ctx.threshold)


def _random_like_lnr(ctx: LabelContext) -> tuple[FlipTable, float]:
    """As many flips as LNR makes at the threshold, drawn at random from larger to smaller classes (the paper's
    control: the number of flips without LNR's choice of samples)."""
    table, used = _lnr(ctx)
    counts = np.bincount(ctx.train_labels, minlength=ctx.cfg.data.num_classes)
    indices = np.arange(ctx.train_labels.shape[0])
    return random_flips(ctx.train_labels, indices, class_prior(counts), len(table), ctx.cfg.seed), used


ORIGINAL_LABELS = LabelPolicy("none", _original, reads_inference=False)
LNR_FLIPS = LabelPolicy("lnr", _lnr, reads_inference=True, iterates=True)
RANDOM_FLIPS = LabelPolicy("random", _random_like_lnr, reads_inference=True)


def flip_report(method: str, table: FlipTable | None, threshold: float | None) -> dict[str, Any]:
    """What results.json says about the labels a method trained on."""
    return {
        "method": method,
        "num_flips": 0 if table is None else len(table),
        "threshold": threshold,
        "flips_sha256": None if table is None else storage.flip_table_sha256(table),
    }
