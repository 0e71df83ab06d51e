"""Jobs on a real SLURM (Debian's slurmctld/slurmd/munge + slurmdbd/mariadb), started by cluster/slurm/ on this
machine with two "nodes" on loopback; submitted through submitit and through the sbatch templates."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from lnr_dist.cli import main
from lnr_dist.core import config as config_lib
from lnr_dist.core.errors import UserError
from lnr_dist.experiment import FaultConfig, ThresholdPolicy
from lnr_dist.launch.submit import (
    ACTIVE,
    PIPELINE,
    UNKNOWN,
    JobFailed,
    LaunchOptions,
    launch,
    queue_state,
    wait_for,
)
from tests.conftest import mini_experiment
from tests.infer.test_infer_ray import flips_bytes_from

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
CREDENTIAL_MARGIN_S = 2.0

REPO = Path(__file__).resolve().parents[2]
START = REPO / "cluster" / "slurm" / "start_local_cluster.sh"
STOP = REPO / "cluster" / "slurm" / "stop_local_cluster.sh"
# ports of its own, so that a developer's cluster on the default ports can keep running beside the tests'
PORTS = {"LNR_SLURM_CTLD_PORT": "16817", "LNR_SLURM_SLURMD_PORT": "16820", "LNR_SLURM_DBD_PORT": "16819",
         "LNR_SLURM_DB_PORT": "13316"}  # fmt: skip


@pytest.fixture(scope="module")
def slurm_cluster():
    if os.geteuid() != 0:
        pytest.fail("the SLURM tests start a real SLURM and need root (as in CI); run them as root")
    state = Path(f"/tmp/lnr-slurm-test-{os.getpid()}")
    env = {**os.environ, **PORTS}
    started = subprocess.run(["bash", str(START), "--nodes", "2", "--state", str(state)], env=env, text=True,
                             capture_output=True)  # fmt: skip
    if started.returncode:
        pytest.fail(f"start_local_cluster.sh failed:\n{started.stdout}\n{started.stderr}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLURM_CONF", str(state / "etc" / "slurm.conf"))
        patch.setenv("PATH", f"/usr/sbin:{os.environ['PATH']}")
        yield state
    subprocess.run(["bash", str(STOP), "--state", str(state), "--purge"], env=env, capture_output=True)


def slurm(*args: str) -> str:
    return subprocess.run(list(args), check=True, capture_output=True, text=True).stdout


def test_bad_input_fails_before_anything_is_submitted(slurm_cluster, mini_root, tmp_path):
    cfg = mini_experiment(mini_root, tmp_path / "run")
    bad = replace(cfg, data=replace(cfg.data, train_split=str(tmp_path / "missing.txt")))
    with pytest.raises(UserError, match="missing.txt"):
        launch("stage1", bad, LaunchOptions(cluster="slurm"))
    with pytest.raises(UserError, match="stage1 first"):
        launch("infer", cfg, LaunchOptions(cluster="slurm"))
    # a pipeline at the default threshold policy (infer) would run the sweep for nothing
    with pytest.raises(UserError, match="stage2.threshold.policy is infer"):
        launch("pipeline", cfg, LaunchOptions(cluster="slurm"))
    assert slurm("squeue", "-h", "-o", "%i").strip() == ""


def test_pipeline_runs_to_the_end_with_dependencies_and_the_sbatch_template(
    slurm_cluster, mini_root, tmp_path
):
    cfg = mini_experiment(
        mini_root, tmp_path / "run", stage1={"epochs": 1, "warmup_epochs": 0},
        infer={"threshold": 2.0, "candidates_t_min": 1.0},
        tune={"thresholds": (1.0, 2.0), "cpus_per_trial": 0.5},
        stage2={"epochs": 1, "batch_size": 32, "eval_batch_size": 128, "lr": 0.05,
                "threshold": ThresholdPolicy("tuned")},  # the pipeline refuses policy infer
    )  # fmt: skip
    submitted = launch("pipeline", cfg, LaunchOptions(cluster="slurm"))
    assert [item.name for item in submitted] == list(PIPELINE)
    for before, after in zip(submitted, submitted[1:], strict=False):
        details = slurm("scontrol", "show", "job", after.job.job_id)
        assert f"afterok:{before.job.job_id}" in details or "Dependency=(null)" in details  # (null) once met
    results = [wait_for(item) for item in submitted]
    stage2 = results[-1]
    chosen = results[2]["threshold"]
    assert stage2["epochs"] == 1 and stage2["flips"]["method"] == "lnr"
    assert stage2["flips"]["threshold"] == chosen  # the pipeline's stage 2 takes the sweep's threshold
    ids = ",".join(item.job.job_id for item in submitted)
    deadline = time.monotonic() + 60  # the result is written before the job's Ray teardown ends
    while "RUNNING" in (states := slurm("sacct", "-n", "-X", "-P", "-j", ids, "-o", "JobID,State")):
        assert time.monotonic() < deadline, states
        time.sleep(0.5)
    assert sorted(states.split()) == sorted(f"{item.job.job_id}|COMPLETED" for item in submitted)

    # the same stage 2 through the plain-sbatch template (a finished stage resumes, re-evaluates, rewrites results)
    config_file = config_lib.save_resolved(cfg.with_absolute_paths(), tmp_path)
    results_file = Path(cfg.with_absolute_paths().run_dir) / "stage2" / "results.json"
    results_file.unlink()
    env = {**os.environ, "LNR_PYTHON": sys.executable, "LNR_DIST_HOME": str(REPO)}
    job_id = subprocess.run(
        ["sbatch", "--parsable", "--wait", f"--output={tmp_path}/sbatch-%j.out", str(REPO / "cluster" / "sbatch" /
         "stage2_lnr.sbatch"), str(config_file), "stage2.threshold.policy=tuned"],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )  # fmt: skip
    output = next(tmp_path.glob("sbatch-*.out")).read_text()
    assert job_id.returncode == 0, output[-3000:]
    assert results_file.is_file() and "stage2 done" in output


def test_two_node_allocation_runs_inference_with_the_flips_of_a_local_run(
    slurm_cluster, mini_root, stage1_checkpoint, tmp_path
):
    from lnr_dist.infer.inference import run_inference

    infer = {"threshold": 2.0, "checkpoint": str(stage1_checkpoint)}
    local = mini_experiment(mini_root, tmp_path / "local", infer=infer)
    run_inference(local)  # the local Ray cluster of the test session
    spread = mini_experiment(mini_root, tmp_path / "slurm", infer=infer, ray={"placement_strategy": "SPREAD"})
    [item] = launch("infer", spread, LaunchOptions(cluster="slurm", nodes=2, cpus_per_task=1))
    summary = wait_for(item)
    assert summary["world_size"] == 2
    assert len(set(summary["ray_node_per_worker"])) == 2  # one worker on each node
    assert "Ray cluster of 2 node(s)" in item.job.paths.stderr.read_text()
    assert flips_bytes_from(tmp_path / "slurm" / "infer" / "flips.npz") == flips_bytes_from(
        tmp_path / "local" / "infer" / "flips.npz"
    )
    assert summary["num_flips"] > 0


def test_preempted_and_requeued_training_resumes_from_its_checkpoints(slurm_cluster, mini_root, tmp_path):
    """First a preemption signal (USR2, what SLURM sends before a time limit or a preemption): submitit calls
    JobTask.checkpoint() and requeues the job; then `scontrol requeue`. Each time it resumes from last.pt."""
    cfg = mini_experiment(mini_root, tmp_path / "run", stage1={"epochs": 6})
    [item] = launch("stage1", cfg, LaunchOptions(cluster="slurm"))
    job_id = item.job.job_id
    deadline = time.monotonic() + 400

    def interrupt_after(epochs: int, *command: str) -> None:
        while len(_epochs(tmp_path)) < epochs:
            assert time.monotonic() < deadline and queue_state(job_id) in (*ACTIVE, UNKNOWN), _log(item)[
                -3000:
            ]
            time.sleep(0.5)
        runs = _log(item).count("Starting with JobEnvironment")
        slurm(*command)
        # SLURM holds a requeued job back for ~2 minutes (BeginTime); let it start again soon. Not in the same
        # second as it left the node: slurmd revoked the old run's credential then, at one-second resolution, and
        # a credential issued within that second is refused (the launch fails and the job ends FAILED)
        while not (slurm("squeue", "-h", "-j", job_id, "-o", "%T").strip() == "PENDING" or
                   _log(item).count("Starting with JobEnvironment") > runs):  # fmt: skip
            assert time.monotonic() < deadline, _log(item)[-3000:]
            time.sleep(0.2)
        time.sleep(CREDENTIAL_MARGIN_S)
        subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], capture_output=True)

    interrupt_after(2, "scancel", "--signal=USR2", job_id)
    interrupt_after(4, "scontrol", "requeue", job_id)
    try:
        results = wait_for(item)
    except JobFailed as exc:  # what SLURM itself said of the job, for the next look at a failure
        pytest.fail(f"{exc}\n--- SLURM's logs on job {job_id} ---\n{_slurm_log_lines(slurm_cluster, job_id)}")
    assert results["epochs"] == 6
    assert _epochs(tmp_path) == [0, 1, 2, 3, 4, 5]  # every epoch once: none redone before a checkpoint
    logs = _log(item)
    assert logs.count("Starting with JobEnvironment") == 3  # the same job id ran three times
    assert "job interrupted (preemption or time limit): requeued" in logs  # JobTask.checkpoint()
    assert logs.count("resumed stage1 from") == 2


def _slurm_log_lines(state: Path, job_id: str, last: int = 40) -> str:
    """The daemons' log lines on one job, and its attempts in the accounting (sacct --duplicates)."""
    lines = []
    about = re.compile(rf"(JobId=|job ){job_id}\b", re.IGNORECASE)
    for log in sorted((state / "log").glob("slurm*.log")):
        lines += [
            f"{log.name}: {line}"
            for line in log.read_text(errors="replace").splitlines()
            if about.search(line)
        ]
    attempts = subprocess.run(["sacct", "-D", "-X", "-P", "-j", job_id, "-o", "State,ExitCode,Start,End,Reason"],
                              capture_output=True, text=True).stdout  # fmt: skip
    return "\n".join(lines[-last:]) + f"\n--- sacct -D ---\n{attempts}"


def _log(item) -> str:
    paths = item.job.paths
    return "".join(p.read_text() for p in (paths.stdout, paths.stderr) if p.is_file())


def _epochs(run: Path) -> list[int]:
    path = run / "run" / "stage1" / "metrics.csv"
    if not path.is_file():
        return []
    return [int(row["epoch"]) for row in csv.DictReader(path.open())]


def test_failing_job_is_reported_with_its_log(slurm_cluster, mini_root, tmp_path, capsys):
    cfg = mini_experiment(mini_root, tmp_path / "run", stage1={"epochs": 2},
                          fault=FaultConfig(raise_at_epoch=1, once=False), ray={"max_failures": 0})  # fmt: skip
    config_file = config_lib.save_resolved(cfg.with_absolute_paths(), tmp_path)
    code = main(["launch", "stage1", "--config", str(config_file), "--cluster", "slurm", "--wait"])
    err = capsys.readouterr().err
    assert code == 1
    assert "stage1 job" in err and "failed" in err and "_log.err" in err
    assert "injected fault at step 1" in err  # the log's last lines


def test_local_cluster_runs_the_same_task_in_a_local_process(mini_root, tmp_path):
    cfg = mini_experiment(mini_root, tmp_path / "run", fault=FaultConfig(raise_at_epoch=1, once=False),
                          ray={"max_failures": 0, "num_workers": 1})  # fmt: skip
    [item] = launch("stage1", cfg, LaunchOptions(cluster="local"))
    with pytest.raises(JobFailed, match="injected fault"):
        wait_for(item)
    assert item.job.paths.stderr.is_file()


def test_stopping_the_cluster_leaves_nothing_running(slurm_cluster):
    subprocess.run(["bash", str(STOP), "--state", str(slurm_cluster)], check=True, capture_output=True)
    conf = f"SLURM_CONF={slurm_cluster / 'etc' / 'slurm.conf'}".encode()
    left = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            comm = (proc / "comm").read_text().strip()
        except OSError:
            continue
        job_process = any(v.startswith(b"SLURM_JOB_ID=") for v in environ)  # a job's, Ray's included
        if conf in environ and (
            job_process or comm in ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd")
        ):
            left.append(f"{proc.name} {comm}")
        if comm == "slurmstepd":
            left.append(f"{proc.name} {comm}")
    assert not left, left
    assert not list((slurm_cluster / "run").glob("*.pid"))
