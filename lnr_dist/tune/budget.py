"""`lnr-dist tune` with tune.flip_budget: the threshold whose EXPECTED number of LNR flips is tune.flip_budget x the
training set, by bisection on the inference job's sparse candidates (lnr_dist/lnr/budget.py). No training and no
Ray Tune: the answer depends on the stage-1 model's predictions only, not on validation.

The threshold goes where the sweep's choice goes, tune/chosen_threshold.json, so stage2.threshold.policy tuned and
`reproduce` use it as they would the grid's; with it the budget, the expected count and the count the flip engine
realises at that threshold with the inference job's seed (the flips stage 2 will train on). tune/sweep.md says the
same in a table; a sweep.csv / sweep.png an earlier sweep left in tune/ are removed (they describe another choice).
"""

from __future__ import annotations

from typing import Any

from ..core import config as config_lib
from ..core import storage
from ..core.errors import UserError
from ..experiment import ExperimentConfig
from ..lnr import BudgetOutOfReach, threshold_for_budget
from ..stage2.flip_sources import FlipSource


def run_flip_budget(cfg: ExperimentConfig, method: str) -> dict[str, Any]:
    """Find, record and return the threshold of tune.flip_budget for `method` (a method with a tuned threshold).

    Returns chosen_threshold.json's content: threshold, flip_budget, num_train, budget_flips (F x N), expected_flips
    (within `tolerance` of budget_flips), realised_flips, t_min and expected_at_t_min, bisection_steps.

    Raises:
        UserError: no inference outputs or no candidates.npz (infer.candidates_t_min unset when infer ran); a budget
            that needs a threshold below the candidates' t_min (names tune.flip_budget and infer.candidates_t_min).
    """
    cfg = cfg.with_absolute_paths()
    layout = cfg.layout
    source = FlipSource(layout)  # refuses a run folder without the inference job's outputs
    if source.candidates is None:
        raise UserError(f"tune.flip_budget is found on {layout.infer_file('candidates.npz')}, which does not exist: "
                        "set infer.candidates_t_min and run `lnr-dist infer` again")  # fmt: skip
    fraction = float(cfg.tune.flip_budget)
    num_train = int(source.summary["num_samples"])
    try:
        found = threshold_for_budget(source.candidates, source.prior, fraction * num_train)
    except BudgetOutOfReach as exc:
        raise UserError(
            f"tune.flip_budget {fraction:g} ({exc.budget:.1f} expected flips of {num_train} training samples) needs a "
            f"threshold below infer.candidates_t_min = {exc.t_min:g}, where the candidates give at most "
            f"{exc.reachable:.1f} expected flips ({exc.reachable / num_train:.4f} of the training set): lower "
            "infer.candidates_t_min and run `lnr-dist infer` again, or lower tune.flip_budget"
        ) from None
    table, _ = source.at(found.threshold)
    report = {
        "threshold": found.threshold,
        "method": method,
        "search": "flip_budget",
        "flip_budget": fraction,
        "num_train": num_train,
        "budget_flips": found.budget,
        "expected_flips": found.expected,
        "realised_flips": len(table),
        "tolerance": found.tolerance,
        "bisection_steps": found.steps,
        "t_min": source.candidates.t_min,
        "expected_at_t_min": found.at_t_min,
        "infer_seed": source.seed,
        "edge_warning": None,
    }
    out = layout.tune
    config_lib.save_resolved(cfg, out)
    for stale in (layout.sweep_csv, out / "sweep.png"):
        stale.unlink(missing_ok=True)
    storage.write_text(out / "sweep.md", _markdown(report))
    storage.write_json(layout.chosen_threshold, report)
    return report


def _markdown(r: dict[str, Any]) -> str:
    return (
        "| flip budget | training samples | budget (flips) | threshold | expected flips | realised flips |\n"
        "|---:|---:|---:|---:|---:|---:|\n"
        f"| {r['flip_budget']:g} | {r['num_train']} | {r['budget_flips']:.1f} | {r['threshold']:.4f} | "
        f"{r['expected_flips']:.1f} | {r['realised_flips']} |\n\n"
        f"Threshold of tune.flip_budget for {r['method']}, by bisection on the inference job's candidates "
        f"(t_min {r['t_min']:g}, where {r['expected_at_t_min']:.1f} flips are expected) in {r['bisection_steps']} "
        f"steps: expected flips within {r['tolerance']:g} of the budget; realised: the flip engine's draw with the "
        f"inference seed {r['infer_seed']}. No training, no validation, no Ray Tune.\n"
    )
