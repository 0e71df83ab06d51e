"""Every shipped config file loads: a typo in configs/ fails here, not on the cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from lnr_dist.config import load_section
from lnr_dist.data.config import DataConfig

CONFIGS = sorted(
    p for p in (Path(__file__).parents[1] / "configs").glob("*.yaml") if p.name != "flips_example.yaml"
)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_data_section_loads(path):
    cfg = load_section(DataConfig, path, "data")
    assert cfg.num_classes >= 10
