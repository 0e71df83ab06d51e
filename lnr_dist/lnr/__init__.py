"""Pure LNR mathematics: class statistics, rates, counter-based draws, flip table. No I/O, no distributed."""

from .budget import BudgetOutOfReach, BudgetThreshold, ExpectedFlips, threshold_for_budget
from .flips import (
    Candidates,
    FlipResult,
    binary_flips,
    candidates_for_rows,
    compute_flips,
    default_chunk_rows,
    flip_rates,
    flips_for_rows,
    flips_from_candidates,
    random_flips,
)
from .rng import stream_key, uniforms
from .rounds import cumulative, labels_after, next_round, round_candidates
from .stats import ClassMoments, ClassStats, accumulate_stats, class_prior
from .table import FlipTable
from .validate import InputError, check_inputs, check_threshold, class_list, empty_classes

__all__ = [
    "BudgetOutOfReach",
    "BudgetThreshold",
    "Candidates",
    "ClassMoments",
    "ClassStats",
    "ExpectedFlips",
    "FlipResult",
    "FlipTable",
    "InputError",
    "accumulate_stats",
    "binary_flips",
    "candidates_for_rows",
    "check_inputs",
    "check_threshold",
    "class_list",
    "class_prior",
    "compute_flips",
    "cumulative",
    "default_chunk_rows",
    "empty_classes",
    "flip_rates",
    "flips_for_rows",
    "flips_from_candidates",
    "labels_after",
    "next_round",
    "random_flips",
    "round_candidates",
    "stream_key",
    "threshold_for_budget",
    "uniforms",
]
