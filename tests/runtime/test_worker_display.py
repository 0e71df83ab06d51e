"""The driver's Display (--log-level, progress bar or lines) reaches every Ray Train worker through run_workers'
loop config, without a Ray cluster: the trainer is replaced by one that records what it was given."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from lnr_dist.core import logs
from lnr_dist.experiment import RayConfig
from lnr_dist.runtime import raycluster


@pytest.fixture
def driver_display():
    """A driver whose screen is a terminal, at --log-level DEBUG; the process's logging restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    logs.set_display(logs.Display(level="DEBUG", bar=True))
    yield
    logs.set_display(logs.Display())
    root.handlers[:], root.level = handlers, level


def test_run_workers_hands_the_drivers_display_to_the_workers(monkeypatch, tmp_path, driver_display):
    given = []

    class FakeTrainer:
        def __init__(self, worker, loop_config, *args) -> None:
            given.append(loop_config)

        def fit(self) -> None:
            pass

    monkeypatch.setattr(raycluster, "ensure_ray", lambda cfg: None)
    monkeypatch.setattr(raycluster, "groups_that_fit", lambda cfg, name: 1)
    monkeypatch.setattr(raycluster, "_trainer", FakeTrainer)
    loop_config = {"config": {"seed": 0}}
    before = time.time()
    raycluster.run_workers(print, loop_config, RayConfig(), "stage1", tmp_path, tmp_path / "stage1")
    [handed] = given
    assert (
        before <= handed.pop(raycluster.STARTED_KEY) <= time.time()
    )  # workers.json's start-up counts from it
    assert handed == {"config": {"seed": 0}, raycluster.DISPLAY_KEY: {"level": "DEBUG", "bar": True}}
    assert loop_config == {"config": {"seed": 0}}  # the caller's dict is left as it was


def test_a_worker_adopts_the_display_and_logs_at_its_level(tmp_path: Path, driver_display):
    logs.set_display(logs.Display())  # a fresh worker process: INFO, lines
    seen = {}

    def worker(loop_config):
        logs.setup_logging(rank=0)  # what worker_setup does
        seen["display"] = logs.display()
        seen["level"] = logging.getLogger().level

    display = {"level": "DEBUG", "bar": True}
    raycluster._run_recording_errors(
        worker, str(tmp_path), 1, "stage1", {"config": {}, raycluster.DISPLAY_KEY: display}
    )
    assert seen == {"display": logs.Display(level="DEBUG", bar=True), "level": logging.DEBUG}
