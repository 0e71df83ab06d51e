"""The tables: results_per_seed.csv (each number as read from its method's results.json), results.csv and
results.md (mean +- std over seeds per method), the published numbers for the dataset, the binary task."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..core import storage
from ..core.layout import RunLayout
from ..data.manifest import Manifest
from ..experiment import ExperimentConfig
from ..rounds import ROUND_FIELDS
from ..stage2.registry import STAGE2_METHODS
from . import compare
from .figures import write_figures

METRICS = ("top1", "many", "medium", "few", "ece", "nll")
COLUMNS = (*METRICS, "ece_calibrated", "num_flips", "threshold")

# (dataset key) -> rows of (method, top-1, ECE or None, source)
MISLAS = "Zhong et al., Improving Calibration for Long-Tailed Recognition (MiSLAS), CVPR 2021"
LNR = "Learning Imbalanced Data with Beneficial Label Noise (LNR), ICML 2025"
PUBLISHED: dict[str, list[tuple[str, float, float | None, str]]] = {
    "cifar10_lt": [("MiSLAS, ResNet-32, IF 100", 82.1, 3.66, MISLAS), ("LNR, IF 100", 83.4, None, LNR)],
    "cifar100_lt": [("MiSLAS, ResNet-32, IF 100", 47.0, 4.83, MISLAS)],
    "imagenet_lt": [("MiSLAS, ResNet-50", 52.7, 1.78, MISLAS)],
    "places_lt": [("MiSLAS, ResNet-152", 40.4, 3.41, MISLAS)],
}


def method_row(folder: Path) -> dict[str, Any]:
    """One method's numbers for one seed, straight from its results.json."""
    results = json.loads((folder / "results.json").read_text())
    if "not_applicable" in results:
        return {"not_applicable": results["not_applicable"]}
    test, flips = results["test"], results.get("flips") or {}
    row = {k: _number(test.get(k)) for k in METRICS}  # None: an empty group (e.g. no many-shot class)
    row["ece_calibrated"] = _number(results["test_calibrated"]["ece"])
    row["num_flips"] = int(flips.get("num_flips", 0))
    row["threshold"] = flips.get("threshold")
    return row


def _number(value: Any) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def _mean_std(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else 0.0


def aggregate(per_seed: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    table = {}
    for method, rows in per_seed.items():
        usable = [r for r in rows if "not_applicable" not in r]
        if not usable:
            table[method] = {"not_applicable": rows[0]["not_applicable"], "seeds": 0}
            continue
        entry: dict[str, Any] = {"seeds": len(usable)}
        for key in COLUMNS:
            values = [r[key] for r in usable if r[key] is not None]
            entry[key] = _mean_std(values) if values else None
        table[method] = entry
    return table


def _cell(value: tuple[float, float] | None, digits: int = 2, seeds: int = 2) -> str:
    """`mean ± std`; the mean alone for one seed (a std of one value says nothing); `–` when there is no value."""
    if value is None:
        return "–"
    mean, std = value
    return f"{mean:.{digits}f}" if seeds < 2 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def write_report(cfg: ExperimentConfig, outcomes: list) -> dict[str, Any]:
    root = cfg.layout
    methods = list(cfg.reproduce.methods)
    per_seed = {m: [method_row(o.methods[m]) for o in outcomes] for m in methods}
    table = aggregate(per_seed)

    seed_rows = [{"method": m, "seed": o.seed, "source": str(o.methods[m] / "results.json"), **row}
                 for m in methods for o, row in zip(outcomes, per_seed[m], strict=True)]  # fmt: skip
    storage.write_csv(
        root.report_file("results_per_seed.csv"),
        seed_rows,
        ["method", "seed", *COLUMNS, "not_applicable", "source"],
    )
    mean_rows = []
    for m in methods:
        entry = table[m]
        row: dict[str, Any] = {
            "method": m,
            "seeds": entry["seeds"],
            "not_applicable": entry.get("not_applicable"),
        }
        for key in COLUMNS:
            value = entry.get(key)
            row[f"{key}_mean"], row[f"{key}_std"] = value if value is not None else (None, None)
        mean_rows.append(row)
    fields = ["method", "seeds"] + [f"{k}_{s}" for k in COLUMNS for s in ("mean", "std")] + ["not_applicable"]
    storage.write_csv(root.report_file("results.csv"), mean_rows, fields)

    rounds = _round_rows(methods, outcomes)
    if rounds:
        storage.write_csv(root.report_file("rounds.csv"), rounds, ["method", "seed", *ROUND_FIELDS])
    comparisons = _comparisons(cfg, outcomes, per_seed)
    storage.write_csv(root.report_file("comparisons.csv"), comparisons, compare.FIELDS)
    figures = write_figures(cfg, outcomes, per_seed)
    storage.write_text(
        root.report_file("results.md"), _markdown(cfg, outcomes, table, figures, comparisons, rounds)
    )
    return {"results_md": str(root.report_file("results.md")), "results_csv": str(root.report_file("results.csv")),
            "comparisons_csv": str(root.report_file("comparisons.csv")), "figures": [str(f) for f in figures],
            "table": table}  # fmt: skip


def format_summary(report: dict[str, Any]) -> str:
    """What `lnr-dist reproduce` and `make demo` print at the end (about 5 + methods + figures lines): test top-1,
    few and ECE of each method (mean over seeds), and where results.md and the figures are; results.md holds the
    rest (every column, comparisons, published numbers, binary task)."""
    lines = [
        f"steps run: {len(report['ran'])}, skipped (done before): {len(report['skipped'])}",
        f"{'method':<20} {'seeds':>5} {'top-1':>7} {'few':>7} {'ECE':>7}   (test, %; every column: results.md)",
    ]
    for method, entry in report["table"].items():
        if "not_applicable" in entry:
            lines.append(f"{method:<20} {0:>5}   n/a: {entry['not_applicable']}")
            continue
        cells = [_cell(entry[k], 2, 1).rjust(7) for k in ("top1", "few", "ece")]
        lines.append(f"{method:<20} {entry['seeds']:>5} " + " ".join(cells))
    lines.append(f"results: {report['results_md']} (and {Path(report['results_csv']).name}, "
                 f"{Path(report['comparisons_csv']).name} beside it)")  # fmt: skip
    lines.append(f"figures ({len(report['figures'])}):")
    lines += [f"  {path}" for path in report["figures"]]
    return "\n".join(lines)


def _comparisons(
    cfg: ExperimentConfig, outcomes: list, per_seed: dict[str, list[dict[str, Any]]]
) -> list[dict]:
    """comparisons.csv's rows from every method's test_logits.npz (paired by dataset index and by seed)."""
    r = cfg.reproduce
    wanted = {m for pair in compare.pairs(r.methods, r.baselines) for m in pair}
    scores: dict[str, list[compare.SampleScores | None]] = {}
    manifest = None
    for method in wanted:
        scores[method] = []
        for outcome, row in zip(outcomes, per_seed[method], strict=True):
            folder = outcome.methods[method]
            applies = "not_applicable" not in row and (folder / "test_logits.npz").is_file()
            scores[method].append(compare.SampleScores.load(folder / "test_logits.npz") if applies else None)
            if applies and manifest is None:
                manifest = Manifest.from_dict(json.loads((folder / "results.json").read_text())["manifest"])
    if manifest is None:
        return []
    return compare.compare(scores, manifest, r.methods, r.baselines, [o.seed for o in outcomes], r.bootstrap,
                           cfg.seed)  # fmt: skip


def _markdown(
    cfg: ExperimentConfig,
    outcomes: list,
    table: dict[str, dict[str, Any]],
    figures: list[Path],
    comparisons: list[dict[str, Any]],
    rounds: list[dict[str, Any]] = (),
) -> str:
    seeds = ", ".join(str(o.seed) for o in outcomes)
    lines = [
        f"# Results: {Path(cfg.data.train_split).name} ({cfg.model.arch}), seeds {seeds}",
        "",
        "Test split, evaluated once per method at the epoch chosen on validation. Mean ± std (ddof 1) over the "
        "seeds where the method applies (column seeds; with one seed, the value alone). Accuracies and ECE in %, "
        "NLL in nats; ECE (T) after temperature scaling fitted on validation; – where a group has no class "
        "(many > 100, few < 20 training images). Threshold: the one the validation sweep chose.",
        "",
        *_noise_lines(cfg, outcomes),
        "| method | seeds | top-1 | many | medium | few | ECE | ECE (T) | NLL | flips | threshold |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for method, entry in table.items():
        if "not_applicable" in entry:
            lines.append(f"| {method} | 0 | n/a: {entry['not_applicable']} |" + " |" * 8)
            continue
        n = entry["seeds"]
        cells = [str(n)] + [
            _cell(entry[k], 2, n) for k in ("top1", "many", "medium", "few", "ece", "ece_calibrated")
        ]
        cells += [_cell(entry["nll"], 3, n), _cell(entry["num_flips"], 1, n), _cell(entry["threshold"], 2, n)]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "Methods: " + "; ".join(f"**{m}** {STAGE2_METHODS[m].description}" for m in table), ""]
    notes = _notes(outcomes, list(table))
    if notes:
        lines += ["Notes:", *(f"- **{method}**: {text}" for method, text in notes), ""]
    for outcome in outcomes:
        chosen = RunLayout(outcome.folder).chosen_threshold
        edge = json.loads(chosen.read_text()).get("edge_warning") if chosen.is_file() else None
        if edge:
            lines += [f"**Warning (seed {outcome.seed}): the threshold the sweep chose is {edge}.**", ""]
    lines += _comparisons_markdown(cfg, comparisons)
    lines += _rounds_markdown(cfg, rounds)
    published = PUBLISHED.get(cfg.reproduce.published or "")
    lines += ["## Published numbers", ""]
    if published:
        lines += ["| method | top-1 | ECE | source |", "|---|---:|---:|---|"]
        lines += [f"| {name} | {top1:.1f} | {'–' if ece is None else f'{ece:.2f}'} | {source} |"
                  for name, top1, ece, source in published]  # fmt: skip
    else:
        lines.append("None for this dataset (set `reproduce.published` to cifar10_lt, cifar100_lt, imagenet_lt or "
                     "places_lt on those benchmarks).")  # fmt: skip
    binary = [o.binary for o in outcomes if o.binary]
    if binary:
        lines += ["", _binary_markdown(binary)]
    lines += ["", "## Figures", ""] + [f"- [{f.name}](figures/{f.name})" for f in figures]
    return "\n".join(lines) + "\n"


def _round_rows(methods: list[str], outcomes: list) -> list[dict[str, Any]]:
    """rounds.csv's lines: every round of each iterated method (stage2.rounds > 1) and seed, from the "rounds"
    of its results.json (lnr_dist/rounds.py)."""
    rows = []
    for method in methods:
        for outcome in outcomes:
            results = json.loads(RunLayout.results(outcome.methods[method]).read_text())
            rows += [{"method": method, "seed": outcome.seed, **row} for row in results.get("rounds", [])]
    return rows


def _rounds_markdown(cfg: ExperimentConfig, rows: list[dict[str, Any]]) -> list[str]:
    """Iterated LNR per round: mean (± std over seeds) of the round's flips and its stage 2's accuracies."""
    if not rows:
        return []
    lines = [
        f"## Iterated LNR: every round (stage2.rounds = {cfg.stage2.rounds})",
        "",
        "Round 1 is the method as run once; round r >= 2 flips again from round r-1's model on round r-1's labels "
        "(lnr_dist/rounds.py), and its stage 2 trains on all flips so far. The method's row above is its last "
        "round. Per seed: rounds.csv; per method and seed: methods/<name>/rounds.png.",
        "",
        "| method | round | seeds | threshold | new flips | flips so far | top-1 | balanced | many | medium | few "
        "| ECE |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    keys = ("threshold", "num_flips", "cumulative_flips", "test_top1", "test_balanced_acc", "test_many",
            "test_medium", "test_few", "test_ece")  # fmt: skip
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["method"], int(row["round"])), []).append(row)
    for (method, number), runs in groups.items():
        cells = []
        for key in keys:
            values = [r[key] for r in runs if _number(r.get(key)) is not None]
            digits = 0 if key in ("num_flips", "cumulative_flips") else 2
            cells.append(_cell(_mean_std(values) if values else None, digits, len(runs)))
        lines.append(f"| {method} | {number} | {len(runs)} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _noise_lines(cfg: ExperimentConfig, outcomes: list) -> list[str]:
    """One line (and a blank) saying what noise the training labels carry, from the first seed's
    label_noise.json (RunLayout; the noise has its own seed, so every seed trains on the same labels); none for
    clean labels."""
    path = RunLayout(outcomes[0].folder).label_noise if outcomes else None
    if not cfg.data.label_noise.active or path is None or not path.is_file():
        return []
    noise = json.loads(path.read_text())
    return [
        f"**The training labels carry {100 * noise['realised_rate']:.1f}% {noise['pattern']} noise** "
        f"(data.label_noise: rate {noise['rate']:g}, seed {noise['seed']}; {noise['num_noisy']:,} of "
        f"{noise['num_samples']:,} labels changed, the same in every seed; transitions in "
        f"{path.parent.name}/{path.name}). Validation and test labels are clean; the many/medium/few groups come "
        "from the clean training counts.",
        "",
    ]


def _notes(outcomes: list, methods: list[str]) -> list[tuple[str, str]]:
    """(method, note) for the `notes` of each method's results.json, over the seeds, each once."""
    found: list[tuple[str, str]] = []
    for method in methods:
        for outcome in outcomes:
            results = outcome.methods[method] / "results.json"
            for text in json.loads(results.read_text()).get("notes", []) if results.is_file() else []:
                if (method, text) not in found:
                    found.append((method, text))
    return found


def _comparisons_markdown(cfg: ExperimentConfig, rows: list[dict[str, Any]]) -> list[str]:
    """Per (method, baseline): delta and its 95% interval for each metric, with the verdict."""
    if not rows:
        return []
    draws = cfg.reproduce.bootstrap
    lines = [
        "## Is the difference real? Paired bootstrap against the baselines",
        "",
        f"Delta = method - baseline in points (mean over the seeds both ran), [95% interval] from {draws} paired "
        "resamples of the test images within each class"
        + (" and of the seeds" if cfg.reproduce.seeds > 1 else "")
        + f" (bootstrap seed {cfg.seed}). **better** / **worse**: the interval excludes 0 (for ECE "
        "lower is better); otherwise not distinguishable from noise (≈). "
        f"{len(rows)} comparisons, no correction for multiple testing: at 95% about 1 in 20 differences that "
        "are really zero will still read better or worse. "
        + (
            "With one seed the interval covers the sampling of test images only, not the seed-to-seed variation "
            "of training: run more seeds (--seeds) before trusting a verdict. "
            if cfg.reproduce.seeds < 2
            else ""
        )
        + "All rows: comparisons.csv.",
        "",
        "| method | baseline | seeds | " + " | ".join(_METRIC_NAMES[m] for m in compare.METRICS) + " |",
        "|---|---|---:|" + "---:|" * len(compare.METRICS),
    ]
    by_pair: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_pair.setdefault((row["method"], row["baseline"]), {})[row["metric"]] = row
    for (method, baseline), metrics in by_pair.items():
        cells = [_comparison_cell(metrics[m]) for m in compare.METRICS]
        seeds = next(iter(metrics.values()))["seeds"]
        lines.append(f"| {method} | {baseline} | {seeds} | " + " | ".join(cells) + " |")
    return [*lines, ""]


_METRIC_NAMES = {"top1": "top-1", "many": "many", "medium": "medium", "few": "few", "ece": "ECE"}
_VERDICT_MARK = {"better": "**better**", "worse": "**worse**", compare.NOISE: "≈"}


def _comparison_cell(row: dict[str, Any]) -> str:
    if row["delta"] is None:
        return "–"
    if row["ci_low"] is None:
        return f"{row['delta']:+.2f}"
    return (
        f"{row['delta']:+.2f} [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}] {_VERDICT_MARK[row['verdict']]}"
    )


def _binary_markdown(results: list[dict[str, Any]]) -> str:
    first = results[0]
    lines = [
        f"## Binary task: digit {first['classes']['majority']} (majority) vs {first['classes']['minority']} "
        f"(minority at ratio {first['ratio']:g}), threshold {first['threshold']:g}",
        "",
        "| method | seeds | minority recall | majority recall | balanced acc | flips |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for method in first["comparison"]:
        rows = [r["comparison"][method] for r in results if "not_applicable" not in r["comparison"][method]]
        if not rows:
            lines.append(f"| {method} | 0 | n/a: {first['comparison'][method]['not_applicable']} | | | |")
            continue
        cells = [str(len(rows))] + [_cell(_mean_std([r[k] for r in rows]), 1, len(rows))
                                    for k in ("minority_recall", "majority_recall", "balanced_acc", "flips")]  # fmt: skip
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
