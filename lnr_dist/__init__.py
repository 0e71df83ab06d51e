"""lnr-dist: Label Noise Rebalancing (LNR) on long-tailed image benchmarks, from a laptop to a SLURM cluster.

The Python API (lnr_dist.api) is available here: compute_flips, load_config, run_job, run_reproduce, read_results,
register_method and Stage2Method, FlipTable, and the errors UserError, ConfigError, InputError, RunFailed. Each
name is loaded on first use, so `import lnr_dist` imports neither torch nor Ray (nor the API module itself).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import (
        ConfigError,
        FlipTable,
        InputError,
        RunFailed,
        Stage2Method,
        UserError,
        compute_flips,
        load_config,
        read_results,
        register_method,
        run_job,
        run_reproduce,
    )

__all__ = [
    "ConfigError",
    "FlipTable",
    "InputError",
    "RunFailed",
    "Stage2Method",
    "UserError",
    "compute_flips",
    "load_config",
    "read_results",
    "register_method",
    "run_job",
    "run_reproduce",
]


def __getattr__(name: str) -> Any:
    # PEP 562: the API module (numpy, PyYAML) is imported when one of its names is first asked for
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
