"""How `wait_for` reads the SLURM queue while a job is requeued (pure logic: squeue's answers are scripted)."""

from __future__ import annotations

import pytest

from lnr_dist.launch import submit


class FakeJob:
    job_id = "7"

    def __init__(self) -> None:
        self.cleared = 0
        self.watcher = self

    def clear(self) -> None:
        self.cleared += 1


def wait_through(monkeypatch, answers: list, clock_step: float = 2.0) -> list:
    """Run _wait_in_queue against scripted squeue answers; returns those it did not read."""
    answers = list(answers)
    now = [0.0]
    monkeypatch.setattr(submit, "queue_state", lambda job_id: answers.pop(0))
    monkeypatch.setattr(submit.time, "sleep", lambda s: now.__setitem__(0, now[0] + s))
    monkeypatch.setattr(submit.time, "monotonic", lambda: now[0])
    job = FakeJob()
    submit._wait_in_queue(job)
    assert job.cleared == 1
    return answers


def test_a_job_out_of_view_for_one_poll_is_still_waited_for(monkeypatch):
    # requeued: the attempt's end state and a moment out of squeue's view, pending again, running, then done for good
    left = wait_through(
        monkeypatch, ["RUNNING", "FAILED", None, "PENDING", "RUNNING", "COMPLETED", None, None, "never read"]
    )
    assert left == ["never read"]


def test_squeue_not_answering_is_waited_out(monkeypatch):
    left = wait_through(
        monkeypatch, ["RUNNING", submit.UNKNOWN, submit.UNKNOWN, "RUNNING", None, None, None, "x"]
    )
    assert left == ["x"]


def test_squeue_silent_for_longer_than_the_patience_hands_over_to_submitit(monkeypatch):
    polls = int(submit.QUEUE_PATIENCE_S / 2.0) + 5
    left = wait_through(monkeypatch, ["RUNNING"] + [submit.UNKNOWN] * polls + ["x"] * 3)
    assert left[-3:] == ["x"] * 3 and len(left) >= 3


@pytest.mark.parametrize("stderr, state", [("slurm_load_jobs error: Invalid job id specified", None),
                                           ("slurm_load_jobs error: Socket timed out", "UNKNOWN")])  # fmt: skip
def test_a_forgotten_job_and_a_silent_controller_read_differently(monkeypatch, stderr, state):
    class Done:
        returncode, stdout = 1, ""

    Done.stderr = stderr
    monkeypatch.setattr(submit.subprocess, "run", lambda *a, **k: Done())
    assert submit.queue_state("7") == state


def test_a_raylet_gets_distinct_ports_for_every_component():
    """Each port flag of `ray start` names its own port: ports picked one at a time could come back twice, and
    `ray start` then refuses to start (a requeued job's head failed so in CI)."""
    from lnr_dist.launch.ray_allocation import _free_ports, _port_flags

    assert len(set(_free_ports(200))) == 200
    for head in (False, True):
        flags = _port_flags(3, head=head)
        ports = [f.split("=")[1] for f in flags if "worker-port" not in f]
        assert len(ports) == 6 + head and len(set(ports)) == len(ports)
        assert any(f.startswith("--port=") for f in flags) == head
