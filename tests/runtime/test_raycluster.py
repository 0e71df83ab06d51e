"""Running workers on a real local Ray cluster (issue 14, cases 7 and 8): a user error in a worker is one line and
is not retried; workers the cluster cannot hold are refused before the run; a wait for workers is bounded."""

from __future__ import annotations

import shutil

import pytest
import ray

from lnr_dist.cli import main
from lnr_dist.core.errors import UserError
from lnr_dist.experiment import RayConfig
from lnr_dist.runtime.raycluster import ensure_ray, groups_that_fit

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def write_config(tmp_path, root, run_dir, max_failures: int = 1) -> str:
    config = tmp_path / "job.yaml"
    config.write_text(
        f"data:\n  root: {root}\n  train_split: {root / 'Mini_LT_train.txt'}\n"
        f"  val_split: {root / 'Mini_LT_val.txt'}\n  test_split: {root / 'Mini_LT_test.txt'}\n"
        "  num_classes: 10\n  loader: torch\n  image_size: 32\n  resize_size: 32\n  num_threads: 0\n"
        f"model:\n  arch: small_cnn\nrun_dir: {run_dir}\nstage1:\n  epochs: 1\n  batch_size: 32\n"
        f"  eval_batch_size: 128\nray:\n  num_workers: 2\n  use_gpu: false\n  max_failures: {max_failures}\n"
    )
    return str(config)


def cluster_cpus() -> float:
    ensure_ray(RayConfig())  # the session's cluster (an earlier test may have stopped it)
    return ray.cluster_resources()["CPU"]


def cli_lines(text: str, command: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"lnr-dist {command}:")]


def test_an_image_that_fails_on_decode_in_a_worker_is_one_line_and_not_retried(
    mini_root, tmp_path, ray_session, capfd
):
    root = tmp_path / "data"
    shutil.copytree(mini_root, root)
    line = (root / "Mini_LT_train.txt").read_text().splitlines()[100]
    image = root / line.rsplit(" ", 1)[0]
    image.write_bytes(image.read_bytes()[:400] + b"\xff\xd9")  # start and end intact, the middle cut out
    run_dir = tmp_path / "run"
    cluster_cpus()
    capfd.readouterr()

    assert main(["stage1", "--config", write_config(tmp_path, root, run_dir, max_failures=2)]) == 2
    err = capfd.readouterr().err
    (message,) = cli_lines(err, "stage1")
    assert message.startswith(
        f"lnr-dist stage1: error: {root / 'Mini_LT_train.txt'}:101: cannot decode image {image}: "
    )
    # Ray's own PlacementGroupCleaner actor may print a traceback of its own on a host that runs several Ray
    # clusters (it cannot tell which to query); nothing else on the screen is a traceback
    screen = [text for text in err.splitlines() if "PlacementGroupCleaner" not in text]
    assert not [text for text in screen if "Traceback" in text or "Error in training function" in text]
    log = (run_dir / "stage1" / "error.log").read_text()
    headers = [text for text in log.splitlines() if text.startswith("=== ")]
    assert headers and all(" attempt 1, rank " in h and ": UserError: " in h for h in headers), headers
    assert "Traceback (most recent call last)" in log and "cannot decode image" in log
    assert not (run_dir / "stage1" / "checkpoints").exists()  # never got past the first epoch


def test_more_workers_than_the_cluster_holds_are_refused_before_the_run(
    mini_root, tmp_path, ray_session, capsys
):
    cpus = cluster_cpus()
    workers = int(cpus) + 1
    run_dir = tmp_path / "run"
    batch = 16 * workers  # batch sizes are global: divisible by the workers
    argv = ["stage1", "--config", write_config(tmp_path, mini_root, run_dir), f"ray.num_workers={workers}",
            f"stage1.batch_size={batch}", f"stage1.eval_batch_size={batch}"]  # fmt: skip
    assert main(argv) == 2
    assert cli_lines(capsys.readouterr().err, "stage1") == [
        f"lnr-dist stage1: error: stage1 needs ray.num_workers x ray.cpus_per_worker = {workers} x 1 = {workers} "
        f"CPUs; the Ray cluster has {cpus:g} CPUs on 1 node(s), room for {int(cpus)} worker(s) (a worker's "
        f"resources must be on one node; the largest has {cpus:g} CPUs): lower ray.num_workers or "
        "ray.cpus_per_worker"
    ]
    assert not (run_dir / "ray").exists()  # no Ray Train run was started
    # the sweep's trials count the same way (tune/sweep.py uses this helper)
    assert groups_that_fit(RayConfig(num_workers=1, use_gpu=False), "trial") == int(cpus)
    too_big = RayConfig(num_workers=1, cpus_per_worker=cpus + 1, use_gpu=False)
    with pytest.raises(
        UserError, match=rf"^a trial needs ray.num_workers x ray.cpus_per_worker = 1 x {cpus + 1:g} "
    ):
        groups_that_fit(too_big, "a trial")


def test_workers_the_busy_cluster_cannot_place_end_after_ray_start_timeout(
    mini_root, tmp_path, ray_session, capsys
):
    cpus = cluster_cpus()
    if cpus < 2:
        pytest.skip("needs a cluster of at least 2 CPUs")

    @ray.remote(num_cpus=int(cpus) - 1)
    class Holder:  # another job holding all but one CPU: two 1-CPU workers fit the cluster, not its free CPUs
        def ready(self) -> bool:
            return True

    holder = Holder.remote()
    try:
        ray.get(holder.ready.remote())
        argv = [
            "stage1",
            "--config",
            write_config(tmp_path, mini_root, tmp_path / "run"),
            "ray.start_timeout_s=3",
        ]
        assert main(argv) == 2
    finally:
        ray.kill(holder)
    assert cli_lines(capsys.readouterr().err, "stage1") == [
        "lnr-dist stage1: error: stage1: the Ray cluster did not place ray.num_workers = 2 workers x {'CPU': 1.0} "
        f"within ray.start_timeout_s = 3 s (it has {cpus:g} CPUs in all: other jobs hold them, or it did not grow "
        "in time): lower ray.num_workers or ray.cpus_per_worker, free the cluster, or raise ray.start_timeout_s"
    ]


def test_a_killed_worker_is_a_real_fault_and_the_group_is_restarted(mini_root, tmp_path, ray_session, capsys):
    run_dir = tmp_path / "run"
    config = write_config(tmp_path, mini_root, run_dir, max_failures=1)
    cluster_cpus()
    kill = ["fault.raise_at_epoch=0", "fault.rank=1", "fault.kill=true"]
    assert main(["stage1", "--config", config, *kill]) == 0
    err = capsys.readouterr().err
    out = run_dir / "stage1"
    assert (out / ".fault_injected").exists() and (out / "results.json").is_file()
    # the killed rank leaves no traceback; rank 0 may log the collateral one (its peer vanished mid-collective)
    log = (out / "error.log").read_text() if (out / "error.log").exists() else ""
    assert all(" attempt 1, rank 0 " in h for h in log.splitlines() if h.startswith("=== "))
    assert cli_lines(err, "stage1") == []
    restarts = [
        line for line in err.splitlines() if "restarting the workers (1 of ray.max_failures = 1)" in line
    ]
    assert len(restarts) == 1, (
        err
    )  # named by what Ray saw first: the dead rank, or its peer's broken collective


def test_an_address_where_no_ray_cluster_answers_is_refused_at_once():
    from lnr_dist.runtime.raycluster import _check_reachable

    with pytest.raises(UserError, match=r"^ray.address=127.0.0.1:1: no Ray cluster answers there \("):
        _check_reachable("127.0.0.1:1")
    _check_reachable(None)  # a local cluster of our own: nothing to check


def test_bad_input_met_inside_a_launched_job_is_one_line_too(mini_root, tmp_path, ray_session, capfd):
    """The same undecodable image through `launch --wait` (submitit's local executor: the job runs in its own
    process, as on SLURM): exit 2, the worker's message on one line, the traceback only in the job's log."""
    root = tmp_path / "data"
    shutil.copytree(mini_root, root)
    line = (root / "Mini_LT_train.txt").read_text().splitlines()[100]
    image = root / line.rsplit(" ", 1)[0]
    image.write_bytes(image.read_bytes()[:400] + b"\xff\xd9")
    config = write_config(tmp_path, root, tmp_path / "run", max_failures=2)
    capfd.readouterr()

    assert (
        main(["launch", "stage1", "--config", config, "--cluster", "local", "--wait", "ray.num_workers=1"])
        == 2
    )
    err = capfd.readouterr().err
    (message,) = cli_lines(err, "launch")
    assert message.startswith(
        f"lnr-dist launch: error: {root / 'Mini_LT_train.txt'}:101: cannot decode image"
    )
    assert "stage1 job" in message and "_log.err" in message
    assert "Traceback" not in err
