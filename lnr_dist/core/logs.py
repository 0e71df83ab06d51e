"""The one place that configures logging. Library modules only call logging.getLogger(__name__)."""

from __future__ import annotations

import logging
import sys

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _ours_or_warning(record: logging.LogRecord) -> bool:
    return record.name.startswith("lnr_dist") or record.levelno >= logging.WARNING


def setup_logging(level: int | str = logging.INFO, rank: int = 0) -> None:
    """Log to stderr; ranks other than 0 only log warnings and errors, so a W-worker job is not W times louder.
    Other libraries' INFO lines (Ray logs one per reported result) are kept out."""
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
    effective = level if rank == 0 else logging.WARNING
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT if rank == 0 else f"[rank {rank}] {_FORMAT}", "%H:%M:%S"))
    handler.addFilter(_ours_or_warning)
    root.addHandler(handler)
    root.setLevel(effective)
