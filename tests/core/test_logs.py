"""The driver's screen (core/logs.py) and rank 0's progress (core/progress.py): Ray's internal noise off the screen
and in the run log, our own lines kept, progress as plain lines or as one live status line."""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path

import pytest

from lnr_dist.cli import main
from lnr_dist.core import logs
from lnr_dist.core.logs import PROGRESS_MARK, NoiseFilter, Screen, format_progress, is_noise
from lnr_dist.core.progress import BAR_EVERY_S, Progress, Throttle

CYAN, RESET = "\x1b[36m", "\x1b[0m"


def ray(source: str, message: str) -> str:
    """A line as Ray forwards it to the driver: coloured `(Source pid=N)` prefix, then the process's own line."""
    return f"{CYAN}({source}){RESET} {message}"


# seen on this machine's screen in `make demo` and the reproduce measurement (Ray 2.60, ray[train,tune])
NOISE_LINES = [
    ray("PlacementGroupCleaner pid=4921", "Failed to query Ray Train Controller actor state. State API may be "
        "temporarily unavailable. Continuing to monitor."),
    ray("PlacementGroupCleaner pid=4921", "Exception in thread PlacementGroupCleanerMonitor:"),
    ray("PlacementGroupCleaner pid=4921", "Traceback (most recent call last):"),
    ray("PlacementGroupCleaner pid=4921", '  File "/x/ray/dashboard/utils.py", line 687, in ray_address_to_api'),
    ray("PlacementGroupCleaner pid=4921", "ConnectionError: Found multiple active Ray instances: {'192.0.2.2:39315'}"),
    ray("PlacementGroupCleaner pid=4921, ip=10.0.0.7", "Failed to query Ray Train Controller actor state. "
        "[repeated 5x across cluster]"),
    ray("TrainController pid=4833", "[2026-12-02 04:17:13,275 E 4833 4868] core_worker.cc:2465: Actor with class "
        "name: 'PreemptionWatcher' and ID: 'ef8a3ea7daf0ce6ae24df42801000000' has constructor arguments in the "
        "object store and max_restarts > 0. If the arguments in the object store go out of scope or are lost, the "
        "actor restart will fail. See https://github.com/ray-project/ray/issues/53727 for more details."),
    "╭────────────────────────────────────────────────────────╮",
    "│ Configuration for experiment     tune                  │",
    "├────────────────────────────────────────────────────────┤",
    "╰────────────────────────────────────────────────────────╯",
    "View detailed results here: /tmp/demo3/runs/demo/run/seed0/ray/tune",
    "To visualize your results with TensorBoard, run: `tensorboard --logdir /tmp/ray/session_x/artifacts/tune`",
]  # fmt: skip
OUR_LINES = [
    "05:16:53 INFO lnr_dist.reproduce.steps: step 1 of 13: stage1: running",
    ray("RayTrainWorker pid=4953", "04:17:20 INFO lnr_dist.train.trainer: stage1 epoch 1/20: loss 1.7227, val "
        "top-1 10.00, balanced 10.00, few 0.00, ECE 72.45 (127.0 img/s)"),
    ray("RayTrainWorker pid=4953", "04:17:21 INFO lnr_dist.core.progress: stage1 epoch 2/20: 96/329 images (29%), "
        "173 images/s, ETA 00:01"),
    ray("RayTrainWorker pid=4954", "[rank 1] 04:17:21 WARNING lnr_dist.train.trainer: epoch 1: skipped 1 "
        "undecodable images of train.txt: a.jpg"),
    # a worker's own traceback is not Ray's noise, nor is a controller line that is not one of the known ones
    ray("RayTrainWorker pid=4953", "Traceback (most recent call last):"),
    ray("RayTrainWorker pid=4953", '  File "/work/lnr_dist/train/engine.py", line 160, in train_one_epoch'),
    ray("RayTrainWorker pid=4953", "RuntimeError: loss is nan at epoch 3, step 2: training stopped"),
    ray("TrainController pid=4833", "Worker group failed: rank 0 died (OOM)"),
    "lnr-dist stage1: error: runs/mini-data/Mini_LT_train.txt:101: cannot decode image a.jpg",
    "| method | seeds | top-1 | many | medium | few |",
    "method                seeds   top-1     few     ECE",
    "  /tmp/demo/run/figures/reliability_ce.png",
]  # fmt: skip


def test_the_noise_filter_drops_ray_internals_and_keeps_our_lines():
    assert [line for line in NOISE_LINES if not is_noise(line)] == []
    assert [line for line in OUR_LINES if is_noise(line)] == []


def test_a_noisy_warnings_traceback_is_noise_up_to_its_exception_line_and_no_further():
    """Ray Train's controller warns, with a traceback, when a busy host delays its resource request; the same
    process's next lines are its own again."""
    controller = "TrainController pid=3498"
    lines = [
        ray(controller, "Failed to send resource request for train-b04040fed. If this only happens transiently "
            "during network partition or CPU being overloaded, it's safe to ignore this error."),
        ray(controller, "Traceback (most recent call last):"),
        ray(controller, '  File "/x/ray/_private/worker.py", line 3009, in get'),
        ray(controller, "           ^^^^^^^^^^^^^^^^^^^"),
        ray(controller, "ray.exceptions.GetTimeoutError: Get timed out: some object(s) not ready."),
        ray(controller, "Worker group failed: rank 0 died"),
        ray(controller, "Traceback (most recent call last):"),
    ]  # fmt: skip
    noise = NoiseFilter()
    assert [noise(line) for line in lines] == [True, True, True, True, True, False, False]
    assert not is_noise(lines[1])  # on its own, a traceback is shown


def screen_streams(tty: bool = False) -> tuple[io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    if tty:
        out.isatty = err.isatty = lambda: True  # type: ignore[method-assign]
    return out, err


def feed(screen: Screen, lines: list[str], err: bool = True) -> None:
    """As print() writes: the text, then the newline, in separate writes."""
    stream = screen.err if err else screen.out
    for line in lines:
        stream.write(line)
        stream.write("\n")


def test_the_screen_keeps_noise_in_the_run_log_only(tmp_path):
    out, err = screen_streams()
    screen = Screen(out, err)
    feed(
        screen,
        [OUR_LINES[0], "", *NOISE_LINES[7:11], "", *NOISE_LINES[11:], "", OUR_LINES[1], *NOISE_LINES[:7]],
    )
    screen.out.write("results: /tmp/run/results.md\nfigures (11):\n")  # several lines in one write
    screen.attach(tmp_path / "logs" / "demo.log", "lnr-dist demo")  # lines before it are kept for the log
    feed(screen, [OUR_LINES[2], ""])
    screen.close()

    shown = err.getvalue().splitlines()
    # our lines, colour codes removed (not a terminal), the Tune block's blank lines gone with it
    assert shown == [OUR_LINES[0], logs.strip_ansi(OUR_LINES[1]), logs.strip_ansi(OUR_LINES[2]), ""]
    assert out.getvalue() == "results: /tmp/run/results.md\nfigures (11):\n"
    log = (tmp_path / "logs" / "demo.log").read_text().splitlines()
    assert log[0].startswith("=== ") and log[0].endswith(" lnr-dist demo")
    assert [line for line in log[1:] if line] == [
        logs.strip_ansi(line)
        for line in [OUR_LINES[0], *NOISE_LINES[7:], OUR_LINES[1], *NOISE_LINES[:7]]
        + ["results: /tmp/run/results.md", "figures (11):", OUR_LINES[2]]
    ]


def test_verbose_shows_ray_noise_too_and_a_terminal_keeps_colours():
    out, err = screen_streams(tty=True)
    screen = Screen(out, err, verbose=True, terminal=True)
    feed(screen, NOISE_LINES[:2] + OUR_LINES[1:2])
    screen.close()
    assert err.getvalue().splitlines() == NOISE_LINES[:2] + OUR_LINES[1:2]


def test_the_run_log_waits_for_the_run_folder(tmp_path):
    """A command refused before any work (no run folder yet) leaves nothing behind."""
    out, err = screen_streams()
    screen = Screen(out, err)
    run = tmp_path / "run"
    screen.attach(run / "logs" / "stage1.log", "lnr-dist stage1")
    feed(screen, ["lnr-dist stage1: error: bad split"])
    assert not run.exists()
    run.mkdir()  # the job made its folder
    feed(screen, [OUR_LINES[0]])
    screen.close()
    assert (run / "logs" / "stage1.log").read_text().splitlines()[1:] == ["lnr-dist stage1: error: bad split",
                                                                          OUR_LINES[0]]  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def record(
    done: int, elapsed: float, closed: bool = False, key: str = "a", desc: str = "stage1 epoch 1/2"
) -> str:
    payload = {"id": key, "desc": desc, "done": done, "total": 1000, "elapsed": elapsed, "every": 5.0,
               "closed": closed}  # fmt: skip
    return ray(
        "RayTrainWorker pid=7", f"05:22:10 INFO lnr_dist.core.progress: {PROGRESS_MARK}{json.dumps(payload)}"
    )


def test_progress_records_are_one_live_line_on_a_terminal_and_plain_lines_in_the_log(tmp_path):
    out, err = screen_streams(tty=True)
    clock = Clock()
    screen = Screen(out, err, terminal=True, clock=clock)
    screen.attach(tmp_path / "logs" / "stage1.log", "lnr-dist stage1")
    feed(screen, [record(250, 1.0)])
    assert err.getvalue().startswith("\r\x1b[Kstage1 epoch 1/2:  25%|") and "250/1000" in err.getvalue()
    assert "\n" not in err.getvalue()  # drawn in place
    mark = len(err.getvalue())
    feed(screen, [OUR_LINES[0]])  # a line while the bar is up: bar cleared, line, bar again
    again = err.getvalue()[mark:]
    assert again.startswith("\r\x1b[K" + OUR_LINES[0] + "\n")
    assert again.endswith("| 250/1000 images [00:01<00:03, 250 images/s]")
    clock.now += 6  # past the record's `every`: the log gets a plain line
    feed(screen, [record(500, 7.0)])
    feed(screen, [record(750, 7.5) + " [repeated 3x across cluster]"])  # as Ray's log deduplication sends it
    assert err.getvalue().endswith("| 750/1000 images [00:07<00:02, 100 images/s]")
    feed(screen, [record(1000, 8.0, closed=True)])
    assert err.getvalue().endswith("\r\x1b[K")  # the bar is gone with its pass
    screen.close()
    log = (tmp_path / "logs" / "stage1.log").read_text()
    assert PROGRESS_MARK not in log and PROGRESS_MARK not in err.getvalue()
    assert log.splitlines()[1:] == [
        OUR_LINES[0],
        "stage1 epoch 1/2: 500/1,000 images (50%), 71 images/s, ETA 00:07",
    ]


def test_a_line_that_only_looks_like_a_record_is_shown():
    out, err = screen_streams()
    screen = Screen(out, err)
    feed(screen, [f"05:22:10 INFO lnr_dist.x: {PROGRESS_MARK}not json"])
    screen.close()
    assert err.getvalue() == f"05:22:10 INFO lnr_dist.x: {PROGRESS_MARK}not json\n"


def test_format_progress():
    assert format_progress("infer (2 passes)", 1200, 5000, 4.0) == (
        "infer (2 passes): 1,200/5,000 images (24%), 300 images/s, ETA 00:12"
    )
    assert format_progress("features val", 0, 5000, 0.0).endswith("0 images/s, ETA ?")


def test_throttle_is_due_at_most_once_per_interval():
    clock = Clock()
    throttle = Throttle(30.0, clock)
    due = []
    for step in range(8):
        clock.now = 100.0 + 10 * step
        due.append(throttle.due(force=step == 7))
    assert due == [True, False, False, True, False, False, True, True]


def test_rank_0_logs_a_progress_line_every_log_every_s(caplog):
    clock = Clock()
    caplog.set_level(logging.INFO, logger="lnr_dist")
    progress = Progress("stage1 epoch 1/2", 329, rank=0, world_size=2, every_s=0.5, bar=False, clock=clock)
    other = Progress("stage1 epoch 1/2", 329, rank=1, world_size=2, every_s=0.5, bar=False, clock=clock)
    for _ in range(11):  # 11 batches of 16 images per rank, 0.2 s each
        clock.now += 0.2
        progress(16)
        other(16)
    progress.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "stage1 epoch 1/2: 96/329 images (29%), 160 images/s, ETA 00:01",
        "stage1 epoch 1/2: 192/329 images (58%), 160 images/s, ETA 00:00",
        "stage1 epoch 1/2: 288/329 images (88%), 160 images/s, ETA 00:00",
    ]
    assert progress.done == 329  # rank 0's images x 2, capped at the pass's total (padding)


def test_on_a_terminal_rank_0_sends_records_for_the_drivers_bar(caplog):
    clock = Clock()
    caplog.set_level(logging.INFO, logger="lnr_dist")
    progress = Progress("infer (2 passes)", 658, rank=0, world_size=2, every_s=30.0, bar=True, clock=clock)
    for _ in range(10):
        clock.now += BAR_EVERY_S / 2
        progress(32)
    progress.close()
    records = [json.loads(r.getMessage()[len(PROGRESS_MARK) :]) for r in caplog.records]
    assert all(r.getMessage().startswith(PROGRESS_MARK) for r in caplog.records)
    # a record at once, then one per BAR_EVERY_S, and the closing one
    assert [(r["done"], r["closed"]) for r in records] == [(64, False), (192, False), (320, False), (448, False),
                                                           (576, False), (640, True)]  # fmt: skip
    assert {r["id"] for r in records} == {records[0]["id"]} and records[0]["total"] == 658


def test_progress_is_silent_above_info(caplog):
    caplog.set_level(logging.WARNING, logger="lnr_dist")
    progress = Progress("stage1 epoch 1/2", 10, rank=0, world_size=1, every_s=1e-9, bar=False)
    progress(5)
    assert caplog.records == []


@pytest.fixture
def restore_display():
    yield
    logs.set_display(logs.Display())


def test_install_screen_replaces_the_streams_and_sets_the_display(restore_display):
    out, err = screen_streams()
    screen = logs.install_screen("debug", terminal=True, out=out, err=err)
    try:
        assert sys.stdout is screen.out and sys.stderr is screen.err
        assert logs.display() == logs.Display(level="DEBUG", bar=True)
        print(NOISE_LINES[0], file=sys.stderr)
        print("kept")
    finally:
        logs.uninstall_screen()
    assert sys.stdout is not screen.out and logs.display().bar is False
    assert out.getvalue() == "kept\n" and err.getvalue() == ""


def test_the_cli_has_the_screen_for_the_command_only(capsys):
    before = sys.stdout, sys.stderr
    config = Path(__file__).parents[2] / "configs" / "mini.yaml"
    assert main(["--verbose", "--log-level", "debug", "config", "--config", str(config)]) == 0
    assert (sys.stdout, sys.stderr) == before and logs.display() == logs.Display()
    assert capsys.readouterr().out.startswith("data:\n")
