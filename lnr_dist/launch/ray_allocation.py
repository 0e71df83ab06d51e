"""A Ray cluster inside one SLURM allocation: task 0 starts the head, the other tasks join it, task 0's driver runs
the job on every node's resources, and every Ray process is torn down at the end, also on failure.

One task per node. Task 0 writes the head's address into `<share>/head.json` (`share` is on the shared
filesystem); the others wait for it, join with `ray start --block` and stay until task 0 writes `done` or the
head stops answering. Each `ray start` runs in its own process group and is killed as a group: Ray's agents
otherwise linger and hold their ports. Each task has its own short RAY_TMPDIR (Unix socket paths are limited to
~107 bytes) and its own port block, so that several "nodes" on one host never clash.

`run_in_allocation` runs a job of the registry (lnr_dist/jobs.py) this way, from a submitit task (tasks.py) or
from an sbatch template's srun (`in_sbatch_allocation`); neither path needs submitit here.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core import storage
from ..jobs import JOBS

if TYPE_CHECKING:
    from ..experiment import ExperimentConfig

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class TaskPlace:
    """Where this task sits in the allocation."""

    rank: int
    num_tasks: int
    job_id: str
    cpus: int
    gpus: int


def _free_ports(count: int) -> list[int]:
    """`count` distinct free ports. The sockets stay bound until all are chosen: a port asked for one at a time
    can come back twice once its socket is closed (a requeued job's head once got one port for two components,
    and `ray start` refused it)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("", 0))
        return [sock.getsockname()[1] for sock in socks]


_PORT_NAMES = ("node-manager", "object-manager", "metrics-export", "runtime-env-agent", "dashboard-agent-grpc",
               "dashboard-agent-listen")  # fmt: skip


def _port_flags(rank: int, head: bool = False) -> list[str]:
    """Fixed flags for every port a raylet opens (and the head's GCS port): distinct free ports now, and a
    private worker-port range per rank."""
    ports = _free_ports(len(_PORT_NAMES) + head)
    flags = [f"--{name}-port={port}" for name, port in zip(_PORT_NAMES, ports, strict=False)]
    if head:
        flags.append(f"--port={ports[-1]}")
    low = 20000 + 1000 * (rank % 40)
    return [*flags, f"--min-worker-port={low}", f"--max-worker-port={low + 999}"]


def _ray_node_preexec() -> None:
    """preexec_fn of `ray start`: SIGKILL when the task dies, whatever killed it; and SIGUSR2 ignored (inherited
    by the raylet and every Ray worker). SLURM sends the preemption/time-limit signal to EVERY process of the step;
    it is meant for submitit's handler in the driver, which checkpoints and requeues, while its default action
    would kill the Ray processes first and fail the job instead."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def _reachable(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


def _allocation_env() -> dict[str, str]:
    """raycluster.RAY_ENV, forced (every node of the cluster and its driver must agree), without usage stats.
    Imported here, not at the top: `launch` imports this module on the submitting machine, which needs no Ray."""
    from ..runtime.raycluster import RAY_ENV

    return {**RAY_ENV, "RAY_USAGE_STATS_ENABLED": "0"}


class _RayNode:
    """One `ray start --block` in its own process group."""

    def __init__(self, args: list[str], temp_dir: Path, log_path: Path) -> None:
        shutil.rmtree(temp_dir, ignore_errors=True)  # a requeued job must not find a dead session's files
        temp_dir.mkdir(parents=True)
        self.temp_dir = temp_dir
        ray = str(Path(sys.executable).with_name("ray"))
        env = {**os.environ, **_allocation_env(), "RAY_TMPDIR": str(temp_dir)}
        self.log_file = open(log_path, "ab")  # noqa: SIM115 (open for the node's lifetime)
        command = [ray, "start", "--block", f"--temp-dir={temp_dir}", "--disable-usage-stats", *args]
        log.info("starting: %s", " ".join(command))
        self.process = subprocess.Popen(
            command, env=env, stdout=self.log_file, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_ray_node_preexec,
        )  # fmt: skip

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        self.log_file.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _wait(what: str, ready, node: _RayNode, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if not node.running():
            raise RuntimeError(f"{what}: `ray start` exited with code {node.process.returncode}; see its log")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout:.0f} s")
        time.sleep(0.2)


@contextmanager
def ray_allocation(place: TaskPlace, share: Path, timeout: float = 180.0) -> Iterator[str | None]:
    """Yields the head's address on task 0 (run the driver there) and None on the others, after their node has
    left the cluster. Everything started here is stopped on exit."""
    share.mkdir(parents=True, exist_ok=True)
    temp_dir = Path("/tmp") / "lnr-ray" / f"{place.job_id}-{place.rank}"
    resources = [f"--num-cpus={place.cpus}", f"--num-gpus={place.gpus}"]
    head_file, done_file = share / "head.json", share / "done"
    if place.rank == 0:
        for stale in (head_file, done_file):
            stale.unlink(missing_ok=True)
        node = _RayNode(["--head", "--include-dashboard=false", *resources, *_port_flags(0, head=True)],
                        temp_dir, share / "ray-head.log")  # fmt: skip
        try:
            address_file = temp_dir / "ray_current_cluster"  # written once the head really serves
            _wait("Ray head", address_file.is_file, node, timeout)
            address = address_file.read_text().strip()
            storage.write_json(head_file, {"address": address, "job_id": place.job_id})
            _wait_for_nodes(address, place.num_tasks, timeout)
            yield address
        finally:
            _disconnect()
            storage.write_text(done_file, "done\n")
            node.stop()
        return
    deadline = time.monotonic() + timeout
    while not head_file.is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no Ray head address in {head_file} after {timeout:.0f} s")
        time.sleep(0.2)
    address = json.loads(head_file.read_text())["address"]
    node = _RayNode([f"--address={address}", *resources, *_port_flags(place.rank)], temp_dir,
                    share / f"ray-node{place.rank}.log")  # fmt: skip
    try:
        while node.running() and not done_file.exists() and _reachable(address):
            time.sleep(1.0)
        yield None
    finally:
        node.stop()


def _wait_for_nodes(address: str, count: int, timeout: float) -> None:
    """The driver starts only when every task's node has joined, so Ray Train sees all resources."""
    import ray

    from ..experiment import RayConfig
    from ..runtime.raycluster import ensure_ray

    os.environ.update(_allocation_env())
    ensure_ray(RayConfig(address=address))
    deadline = time.monotonic() + timeout
    while sum(node["Alive"] for node in ray.nodes()) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {sum(n['Alive'] for n in ray.nodes())} of {count} Ray nodes joined")
        time.sleep(0.5)
    log.info("Ray cluster of %d node(s) at %s: %s", count, address, ray.cluster_resources())


def _disconnect() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def allocation_place() -> TaskPlace:
    """This task's place in its SLURM allocation (one task per node), from SLURM's variables."""
    cpus = int(
        os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("SLURM_CPUS_ON_NODE") or os.cpu_count()
    )
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    gpus = len([d for d in visible.split(",") if d.strip()])
    # a requeued job must not meet its last attempt's Ray: each attempt has its own folders
    attempt = os.environ.get("SLURM_RESTART_COUNT", "0")
    job_id = f"{os.environ['SLURM_JOB_ID']}.{attempt}"
    return TaskPlace(int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"]), job_id, cpus, gpus)


def run_in_allocation(job: str, cfg: ExperimentConfig, out: str | None = None) -> dict[str, Any] | None:
    """Run `job` on a Ray cluster spanning the allocation: the result on task 0, None on the other tasks."""
    place = allocation_place()
    share = cfg.with_absolute_paths().layout.slurm_share(place.job_id)
    with ray_allocation(place, share) as address:
        if address is None:
            log.info("task %d lent its node to the Ray cluster of task 0; done", place.rank)
            return None
        return JOBS[job](replace(cfg, ray=replace(cfg.ray, address=address)), out)


def in_sbatch_allocation() -> bool:
    """The sbatch templates (cluster/sbatch/) set LNR_RAY_ALLOCATION=1 and start one task per node with srun."""
    return os.environ.get("LNR_RAY_ALLOCATION") == "1" and "SLURM_PROCID" in os.environ
