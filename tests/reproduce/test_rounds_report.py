"""The report's per-round section for iterated LNR (stage2.rounds > 1): results.md and rounds.csv."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

from lnr_dist.core import storage
from lnr_dist.reproduce.report import write_report
from tests.reproduce.conftest import synthetic_run


def _with_rounds(outcomes, method: str) -> None:
    """Give `method`'s results.json the rows lnr_dist/rounds.py writes: round 2 flips fewer, few-shot rises."""
    for outcome in outcomes:
        path = outcome.methods[method] / "results.json"
        results = json.loads(path.read_text())
        rows = [{"round": r, "threshold": 2.5, "num_flips": 100 // r + outcome.seed, "cumulative_flips": 90 + 60 * r,
                 "test_top1": 50.0 + r, "test_balanced_acc": 40.0, "test_many": 60.0, "test_medium": 45.0,
                 "test_few": 20.0 + 4 * r + outcome.seed, "test_ece": 5.0} for r in (1, 2)]  # fmt: skip
        storage.write_json(path, {**results, "rounds": rows})


def test_every_round_of_an_iterated_method_is_a_row_of_results_md(tmp_path):
    cfg, outcomes = synthetic_run(tmp_path / "run", num_classes=30, seeds=2, methods=("mislas", "lnr"))
    cfg = replace(cfg, stage2=replace(cfg.stage2, rounds=2), reproduce=replace(cfg.reproduce, bootstrap=50))
    _with_rounds(outcomes, "lnr")
    write_report(cfg, outcomes)
    text = (tmp_path / "run" / "results.md").read_text()
    assert "## Iterated LNR: every round (stage2.rounds = 2)" in text
    # new flips: 100 + seed (seeds 0, 1) -> 100.5 ± 0.7 shown without decimals; few: 24/25 then 28/29
    assert "| lnr | 1 | 2 | 2.50 ± 0.00 | 100 ± 1 | 150 ± 0 | 51.00 ± 0.00 |" in text
    assert "| 24.50 ± 0.71 | 5.00 ± 0.00 |" in text and "| 28.50 ± 0.71 |" in text
    assert "| mislas | 1 |" not in text
    with open(tmp_path / "run" / "rounds.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["method"], r["seed"], r["round"]) for r in rows] == [("lnr", "0", "1"), ("lnr", "0", "2"),
                                                                    ("lnr", "1", "1"), ("lnr", "1", "2")]  # fmt: skip


def test_a_report_without_rounds_has_no_round_section(tmp_path):
    cfg, outcomes = synthetic_run(tmp_path / "run", num_classes=30, seeds=1, methods=("mislas", "lnr"))
    write_report(replace(cfg, reproduce=replace(cfg.reproduce, bootstrap=0)), outcomes)
    assert "Iterated LNR" not in (tmp_path / "run" / "results.md").read_text()
    assert not (tmp_path / "run" / "rounds.csv").exists()
