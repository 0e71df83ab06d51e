"""Iterated LNR (issue 17, item 4): `stage2.rounds: K` rounds of flips and stage 2 for a method whose label policy
iterates (stage2/flip_sources.py: LNR's flips), inside one stage-2 folder (RunLayout.round: rounds/round<r>/).

Round 1 is the method's run as with rounds 1: its label policy's flips at its threshold policy (the table a single
run trains on, bit for bit) and stage 2 on them. Round r >= 2:

1. predicts the training set with round r-1's stage-2 model. Images backend: the inference job
   (infer/inference.py) with round r-1's best.pt, sharded on Ray Train workers, infer.passes passes (two by
   default) with infer.augment, the statistics all-reduced once and the flips drawn per shard, as round 1's job.
   Features backend: round r-1's head (head.pt) on the cached training features, in this process: those are
   features of un-augmented images, so every pass would give the same softmax and one pass is their average.
2. computes LNR's statistics, prior and candidates on round r-1's labels (lnr/rounds.py next_round) and flips at
   round 1's threshold or, with tune.per_round (features backend only), at the value of tune.thresholds whose
   head scores best on validation (tune.objective; ties to fewer flips, the sweep's rule), with round r's own
   uniforms (lnr/rng.py stream_key: never another round's or another seed's).
3. trains stage 2 from the same stage-1 backbone on the labels so reached (the cumulative table from the
   dataset's labels): every round retrains the classifier as round 1 does; none fine-tunes round r-1's.

Each round keeps the labels it flipped, its flips, the cumulative flips, its predictions, its stage-2 run and a
summary.json written last. A re-run skips a round whose setup.json names the same setup (config, round 1's flips,
the previous rounds' flips) and a summary, resumes an unfinished one (its stage 2 on images from last.pt), and
redoes one made under another setup. The folder's results.json and test_logits.npz are the last round's (what
`reproduce` tables), with one row per round under "rounds"; rounds.csv and rounds.png show flips and accuracy per
round.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .core import config as config_lib
from .core import storage
from .core.errors import UserError
from .core.layout import RoundLayout, RunLayout
from .core.plots import rounds_figure
from .data.manifest import GROUPS, Manifest
from .data.splits import load_train_split
from .experiment import ExperimentConfig
from .features.backend import run_on_features
from .features.cache import head_inputs
from .features.heads import load_head, predict_probs, train_head
from .infer.inference import run_inference
from .lnr import FlipTable, cumulative, flips_from_candidates, labels_after, next_round, round_candidates
from .stage2.flip_sources import FlipSource
from .stage2.registry import Stage2Method, method_of, stage2_flips
from .train.trainer import fit

log = logging.getLogger(__name__)

ROUND_FIELDS = ("round", "threshold", "threshold_from", "num_flips", "cumulative_flips", "val_balanced_acc",
                "val_few", "test_top1", "test_balanced_acc", "test_many", "test_medium", "test_few", "test_ece",
                "predicted_by")  # fmt: skip
SWEEP_FIELDS = ("threshold", "num_flips", "cumulative_flips", "best_epoch", "val_balanced_acc", "val_top1",
                "val_few")  # fmt: skip
_METRICS = ("top1", "balanced_acc", "many", "medium", "few", "ece", "nll")


def run_rounds(cfg: ExperimentConfig, folder: Path) -> dict[str, Any]:
    """All stage2.rounds rounds of cfg.stage2.method into `folder` (module docstring); returns the folder's
    results.json (the last round's, plus "rounds"). Raises UserError, before any work, for a method whose
    labels do not iterate, tune.per_round off the features backend, or missing inference outputs."""
    cfg = cfg.with_absolute_paths()
    folder = Path(folder).absolute()
    method = method_of(cfg)
    method.check_inputs(cfg)
    if not method.labels.iterates:
        raise UserError(f"stage2.rounds: method {method.name!r} trains on {method.labels.name!r} labels, which do "
                        "not iterate (LNR's flips do): set stage2.rounds=1 or pick such a method")  # fmt: skip
    backend = method.backend(cfg.stage2)
    if cfg.tune.per_round and backend != "features":
        raise UserError(f"tune.per_round: re-tuning each round's threshold trains heads on cached features, but "
                        f"method {method.name} runs on {backend}: set stage2.backend=features or "
                        "tune.per_round=false")  # fmt: skip
    # the training labels (with data.label_noise, the noisy ones), and round 1's flip seed (infer.seed or the
    # seed): every round draws with it
    original = load_train_split(cfg.data).labels
    seed = FlipSource(cfg.layout).seed
    first, threshold = stage2_flips(cfg, original)
    setup = _setup_key(cfg, backend, first)
    config_lib.save_resolved(cfg, folder)
    tables: list[FlipTable] = []
    rows: list[dict[str, Any]] = []
    for r in range(1, method.rounds_of(cfg.stage2) + 1):
        layout = RunLayout.round(folder, r)
        wanted = {
            "round": r,
            "setup": setup,
            "previous_flips_sha256": storage.flip_table_sha256(cumulative(tables)),
        }
        summary = _finished(layout, wanted)
        if summary is None:
            storage.write_json(layout.setup, wanted)
            round_table = first if r == 1 else None
            ran = _run_round(
                cfg, method, backend, folder, layout, original, tables, seed, threshold, round_table
            )
            summary = {**wanted, **ran}
            storage.write_json(layout.summary, summary)
        else:
            log.info("rounds: round %d done before (%s), kept", r, layout.summary)
        tables.append(storage.load_flip_table(layout.flips))
        rows.append(_row(summary))
    last = RunLayout.round(folder, len(rows)).stage2
    results = {**json.loads(RunLayout.results(last).read_text()), "rounds": rows}
    storage.write_with(
        folder / "test_logits.npz", lambda handle: handle.write((last / "test_logits.npz").read_bytes())
    )
    storage.write_csv(RunLayout.rounds_csv(folder), rows, ROUND_FIELDS)
    rounds_figure(rows, RunLayout.rounds_figure(folder), f"iterated LNR: {method.name}, seed {cfg.seed}")
    storage.write_json(RunLayout.results(folder), results)
    return results


def _setup_key(cfg: ExperimentConfig, backend: str, first: FlipTable) -> str:
    """What a finished round depends on besides the previous rounds' flips: the config sections that shape
    predictions, flips and stage 2 (not stage2.rounds: adding rounds keeps the finished ones), the backend and
    round 1's flips (a new sweep choice or inference run changes every round)."""
    data = config_lib.to_dict(cfg)
    stage2 = {k: v for k, v in data["stage2"].items() if k != "rounds"}
    parts = {name: data[name] for name in ("data", "model", "stage1", "infer", "seed")}
    parts.update(stage2=stage2, backend=backend, first_flips=storage.flip_table_sha256(first),
                 tune=data["tune"] if cfg.tune.per_round else None)  # fmt: skip
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _finished(layout: RoundLayout, wanted: dict[str, Any]) -> dict[str, Any] | None:
    """The round's summary when it finished on the `wanted` setup; None when it must run. A round folder made on
    another setup is removed first (its stage 2 on images would otherwise be refused, or resumed)."""
    recorded = json.loads(layout.setup.read_text()) if layout.setup.is_file() else None
    if recorded is not None and recorded != wanted:
        log.warning(
            "rounds: %s was made on another setup (config or earlier flips): it runs again", layout.root
        )
        shutil.rmtree(layout.root)
        return None
    if recorded is not None and layout.summary.is_file():
        return json.loads(layout.summary.read_text())
    return None


def _run_round(
    cfg: ExperimentConfig,
    method: Stage2Method,
    backend: str,
    folder: Path,
    layout: RoundLayout,
    original: np.ndarray,
    previous: list[FlipTable],
    seed: int,
    first_threshold: float,
    table: FlipTable | None,
) -> dict[str, Any]:
    """Round layout.round: predict (round >= 2), flip, train stage 2; the round's summary (not yet written).
    `table` is round 1's flips (the label policy's); None for a later round."""
    r = layout.round
    before = labels_after(original, previous)
    storage.write_npy(layout.labels, before)
    threshold, threshold_from, sweep = (
        first_threshold,
        f"stage2.threshold.policy {cfg.stage2.threshold.policy}",
        None,
    )
    if r == 1:
        predicted_by = "the stage-1 model (infer/)"
    else:
        threshold_from = "round 1"
        before_layout = RunLayout.round(folder, r - 1)
        if backend == "features":
            predicted_by = f"round {r - 1}'s head on the cached training features"
            inputs = head_inputs(cfg)
            probs = predict_probs(load_head(RunLayout.head(before_layout.stage2)), inputs.features["train"])
            storage.write_npy(layout.predictions, probs)
            if cfg.tune.per_round:
                threshold, sweep = _retune(cfg, method, probs, original, previous, seed, inputs)
                threshold_from = f"tune.per_round on validation {cfg.tune.objective}"
                storage.write_csv(layout.sweep_csv, sweep, SWEEP_FIELDS)
            table = next_round(probs, original, previous, threshold, seed).table
        else:
            predicted_by = f"round {r - 1}'s stage-2 model (sharded inference, {cfg.infer.passes} passes)"
            infer = replace(cfg.infer, checkpoint=str(before_layout.stage2_checkpoint), threshold=threshold,
                            candidates_t_min=None, seed=seed)  # fmt: skip
            run_inference(replace(cfg, infer=infer), out=layout.infer, labels=layout.labels, round=r)
            table = storage.load_flip_table(layout.infer / "flips.npz")
    total = cumulative([*previous, table])
    storage.save_flip_table(layout.flips, table)
    storage.save_flip_table(layout.cumulative_flips, total)
    log.info("rounds: round %d flips %d labels at threshold %g (%d changed from the dataset's)", r, len(table),
             threshold, len(total))  # fmt: skip
    if backend == "features":
        results = run_on_features(cfg, layout.stage2, flips=(total, threshold))
    else:
        results = fit(cfg, "stage2", out=layout.stage2, flips=(str(layout.cumulative_flips), threshold))
    counts = np.bincount(before, minlength=cfg.data.num_classes)
    after = table.counts_after(counts)
    # groups of the dataset's labels (the clean counts under data.label_noise)
    manifest = Manifest.of_split(load_train_split(cfg.data), cfg.data.num_classes)
    return {
        "threshold": threshold, "threshold_from": threshold_from, "seed": seed, "predicted_by": predicted_by,
        "num_flips": len(table), "cumulative_flips": len(total), "flips_sha256": storage.flip_table_sha256(table),
        "cumulative_flips_sha256": storage.flip_table_sha256(total), "counts_before": counts.tolist(),
        "counts_after": after.tolist(),
        "groups": {g: {"before": int(counts[manifest.group_classes(g)].sum()),
                       "after": int(after[manifest.group_classes(g)].sum())} for g in GROUPS},
        **{split: {k: (results.get(split) or {}).get(k) for k in _METRICS} for split in ("val", "test")},
        "sweep": sweep, "stage2": str(layout.stage2),
    }  # fmt: skip


def _retune(
    cfg: ExperimentConfig,
    method: Stage2Method,
    probs: np.ndarray,
    original: np.ndarray,
    previous: list[FlipTable],
    seed: int,
    inputs: Any,
) -> tuple[float, list[dict[str, Any]]]:
    """tune.per_round on cached features: round r's flips at each of tune.thresholds (from one candidate pass at
    the lowest), a head per value trained for tune.epochs on the cumulative flips, the best validation
    tune.objective chosen (ties: fewer flips, as the sweep). Returns (threshold, one row per value)."""
    r = len(previous) + 1
    grid = sorted({float(t) for t in cfg.tune.thresholds})
    found, moments = round_candidates(probs, original, previous, grid[0])
    objective = cfg.tune.objective
    rows = []
    for t in grid:
        table = flips_from_candidates(found, moments.prior, t, seed, r)
        total = cumulative([*previous, table])
        result = train_head(cfg.stage2, method, cfg.tune.epochs or cfg.stage2.epochs, inputs.manifest,
                            inputs.features, inputs.labels, inputs.classifier, total, cfg.seed, objective)  # fmt: skip
        metrics = {f"val_{k}": result.best.get(k) for k in ("balanced_acc", "top1", "few", objective)}
        rows.append({"threshold": t, "num_flips": len(table), "cumulative_flips": len(total),
                     "best_epoch": result.best_epoch, **metrics})  # fmt: skip
    chosen = max(rows, key=lambda row: (row[f"val_{objective}"], -row["num_flips"]))
    return chosen["threshold"], rows


def _row(summary: dict[str, Any]) -> dict[str, Any]:
    """One line of rounds.csv (and of results.json's "rounds") from a round's summary."""
    row = {k: summary.get(k) for k in ("round", "threshold", "threshold_from", "num_flips", "cumulative_flips",
                                       "predicted_by")}  # fmt: skip
    row.update({f"val_{k}": summary["val"].get(k) for k in ("balanced_acc", "few")})
    row.update(
        {
            f"test_{k}": summary["test"].get(k)
            for k in ("top1", "balanced_acc", "many", "medium", "few", "ece")
        }
    )
    return row
