"""`make demo`: `lnr-dist reproduce` on the bundled real mini set (scikit-learn digits, long-tailed) with the
defaults of configs/mini.yaml, on a local Ray cluster; the mini set is built first when missing.

To stay within a few minutes on a 2-core laptop, the demo trains the stage-2 heads of mislas / lnr / random on
cached stage-1 features (`stage2.backend=features`, the sweep's trial recipe); `lnr-dist reproduce --config
configs/mini.yaml` runs them as the stage-2 job on images (Ray Train)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .core.config import load_config
from .experiment import ExperimentConfig

MINI_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "mini.yaml"
# Pool size / training size of the demo's mini set: 2 x 329 wanted, 65 per class; 586 drawn, as the head class
# has 4 digits left and the next one 62.
POOL_RATIO = 2.0


def demo_config(out: Path, overrides: list[str] | None = None) -> ExperimentConfig:
    data = out / "mini-data"
    paths = [f"data.root={data}", f"data.train_split={data}/Mini_LT_train.txt",
             f"data.val_split={data}/Mini_LT_val.txt", f"data.test_split={data}/Mini_LT_test.txt",
             f"data.unlabeled_split={data}/Mini_LT_pool.txt", f"run_dir={out / 'run'}",
             "stage2.backend=features"]  # fmt: skip
    return load_config(ExperimentConfig, MINI_CONFIG, [*paths, *(overrides or [])])


def run_demo(out: Path, overrides: list[str] | None = None) -> dict[str, Any]:
    from .data.mini import make_mini
    from .reproduce.runner import reproduce

    out = out.resolve()
    if not (out / "mini-data" / "Mini_LT_pool.txt").is_file():  # a mini set built before pools: add one
        make_mini(out / "mini-data", unlabeled_ratio=POOL_RATIO)
    return reproduce(demo_config(out, overrides))
