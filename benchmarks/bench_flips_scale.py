"""Flip engine at internet scale, by simulation: per simulated worker, time and memory of the statistics pass, the
W-way merge and the flips/candidates pass, for N x C from 10^5 x 10^3 to 10^7 x 10^4 and W workers.

Run: .venv/bin/python benchmarks/bench_flips_scale.py [--quick] [--sizes 1e5x1e3,1e7x1e4] [--workers 8,64,512]
     [--threads 1] [--dtype float32] [--threshold 14.5] [--t-min 10.5] [--max-shard-entries 2e9]

For each (N, C, W), ONE representative shard (rank W // 2, rows `shard_bounds(N, rank, W)`, R = N / W rows) is
simulated. Its labels follow a long tail of imbalance 256 (ImageNet-LT's 1,280 / 5; every class at least once, so
points with R < C are skipped); its predictions are generated block by block (`--block-mib` of `--dtype`; softmax of
Gaussian logits with a margin on the true class and a bias toward frequent classes, the recipe of
lnr_dist.core.synthetic), so neither the dense N x C matrix nor the shard's R x C one ever exists. Each block is
generated twice from the same seed, as the inference worker reads its predictions twice:
  1. statistics: `accumulate_stats` per block, blocks combined with `ClassStats.merge`;
  2. merge: the all-reduce's arithmetic done in this process, `ClassStats.merge` of W shards' statistics (W - 1
     additions of (10, C) int64; the shards are copies of the representative one, so the merged moments equal its
     own), then `ClassStats.moments`; this is all W workers' additions, an upper bound on one worker's share;
  3. flips: `flips_for_rows` at --threshold and `candidates_for_rows` at --t-min per block with the global moments,
     as infer/inference.py calls them, tables joined with `FlipTable.concat` / `Candidates.concat`.
Block generation is not timed. After the timing, `flips_from_candidates` at --threshold must give the same table
as `flips_for_rows` (the sweep's path and the job's path agree bit for bit), else the run stops.

Time: wall (perf_counter) and CPU (process_time) seconds of the engine calls, one thread per simulated worker by
default: the CPU time is what the worker costs, and wall above CPU means the machine was busy with something else.
Memory: each point runs in a fresh interpreter (this script with --point) and reports its RSS high-water mark above
its RSS just before the shard (Linux: the mark is reset there through /proc/self/clear_refs), i.e. the shard's
labels, the block being generated and processed, the engine's working arrays and the sparse outputs the worker
keeps. An RSS delta rather than tracemalloc because tracemalloc slows the engine's many small allocations down
(measured: the flips pass took 1.9x its CPU time at 10^6 x 10^3 / 8, the merge 10x at C = 10^4), which would
bend the fitted exponent, while the high-water mark costs nothing and is what a worker's memory limit sees; a fresh
process per point keeps an earlier point's peak and the allocator's cached memory out of the next one. A real worker
adds the interpreter, its libraries and, in today's inference job, its dense R x C predictions (`GiB dense`).
Exponent: least squares of log(time per worker) on log(N C / W) over the points run; 1 means the work per worker is
linear in the entries it owns (target 0.9-1.1). Fitted on wall and on CPU seconds, on CPU without the merge, and on
CPU over the shards of at least 10^7 entries, where fixed per-point costs no longer weigh.

Last line: flips_scale_exponent=<wall> flips_scale_cpu_exponent=<CPU> flips_scale_cpu_exponent_large=<CPU, shards
>= 1e7 entries> largest_worker_s=<wall s of the largest shard> largest_peak_mib=<its peak RSS delta, MiB>
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

from lnr_dist.core.synthetic import exponential_counts
from lnr_dist.data.sampling import shard_bounds
from lnr_dist.lnr import (
    Candidates,
    ClassMoments,
    ClassStats,
    FlipTable,
    accumulate_stats,
    candidates_for_rows,
    default_chunk_rows,
    flips_for_rows,
    flips_from_candidates,
)

SIZES = ((10**5, 10**3), (10**6, 10**3), (10**6, 10**4), (10**7, 10**3), (10**7, 10**4))
WORKERS = (8, 64, 512)
QUICK_SIZES = ((10**4, 100), (4 * 10**4, 400))
QUICK_WORKERS = (2, 8)
IMBALANCE = (1_280, 5)  # ImageNet-LT's largest and smallest class
# Shards this large (R x C entries) take >= ~0.1 s, so fixed per-point costs (the O(W C) merge, the O(C) moments,
# per-call overheads) are small beside the work; the exponent is also fitted on them alone.
LARGE_SHARD = 10**7


@dataclass(frozen=True)
class Shard:
    """The representative shard: its first dataset index, (R,) int64 labels, (C,) float32 logit bias toward
    frequent classes, rows per generated block and the seed."""

    start: int
    labels: np.ndarray
    bias: np.ndarray
    block_rows: int
    seed: int

    def blocks(self, dtype: np.dtype):
        """((B,) labels, (B,) int64 dataset indices, (B, C) `dtype` probabilities) per block of `block_rows`;
        block b is drawn from the seed (seed, start, b), so both passes see the same rows."""
        for b, first in enumerate(range(0, self.labels.shape[0], self.block_rows)):
            labels = self.labels[first : first + self.block_rows]
            rng = np.random.default_rng([self.seed, self.start, b])
            indices = np.arange(self.start + first, self.start + first + labels.shape[0], dtype=np.int64)
            yield labels, indices, softmax_rows(labels, self.bias, rng, dtype)


def softmax_rows(
    labels: np.ndarray, bias: np.ndarray, rng: np.random.Generator, dtype: np.dtype
) -> np.ndarray:
    """(B,) labels -> (B, C) rows summing to 1: softmax of N(0, 1.5) logits + `bias` + N(3, 1.5) on the label.

    lnr_dist.core.synthetic's recipe, drawn in float32 (four times faster than its float64 draws, which would make
    generation, not the engine, the benchmark's wall time).
    """
    logits = rng.standard_normal((labels.shape[0], bias.shape[0]), dtype=np.float32)
    logits *= 1.5
    logits += bias
    logits[np.arange(labels.shape[0]), labels] += 3.0 + 1.5 * rng.standard_normal(labels.shape[0], np.float32)
    logits -= logits.max(1, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(1, keepdims=True)
    return logits.astype(dtype, copy=False)


def make_shard(num_samples: int, num_classes: int, workers: int, block_bytes: int, dtype, seed: int) -> Shard:
    start, stop = shard_bounds(num_samples, workers // 2, workers)
    rows = stop - start
    profile = exponential_counts(num_classes, *IMBALANCE).astype(np.float64)
    profile /= profile.sum()
    rng = np.random.default_rng([seed, num_samples, num_classes, workers])
    counts = 1 + rng.multinomial(rows - num_classes, profile)  # every class present: no empty-class refusal
    labels = rng.permutation(np.repeat(np.arange(num_classes, dtype=np.int64), counts))
    bias = (0.5 * np.log(profile / profile.max())).astype(np.float32)
    block_rows = max(1, block_bytes // (num_classes * np.dtype(dtype).itemsize))
    return Shard(start, labels, bias, block_rows, seed)


def all_reduce_moments(local: ClassStats, workers: int) -> ClassMoments:
    """The moments every worker derives after the all-reduce, from `workers` shards' statistics equal to `local`."""
    return functools.reduce(ClassStats.merge, [local] * workers).moments()


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> int:
    """Current RSS in bytes, with the high-water mark reset to it (Linux: /proc/self/clear_refs 5); elsewhere the
    high-water mark so far, which a fresh process keeps close to its current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return 1024 * (_proc_status_kib("VmRSS") or 0)
    except OSError:
        return peak_rss()


def peak_rss() -> int:
    """The process's RSS high-water mark in bytes."""
    hwm = _proc_status_kib("VmHWM")
    if hwm is not None:
        return 1024 * hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else 1024 * peak  # bytes on macOS, KiB on Linux and BSDs


class Clock:
    """Wall and CPU seconds of the engine calls made through it."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __call__(self, func, *args):
        wall, cpu = time.perf_counter(), time.process_time()
        result = func(*args)
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu
        return result


def run_point(num_samples: int, num_classes: int, workers: int, args: argparse.Namespace) -> dict[str, float]:
    """One simulated worker of (N, C, W), in this process; the figures are what the parent prints and fits."""
    dtype = np.dtype(args.dtype)
    baseline = reset_peak_rss()
    shard = make_shard(num_samples, num_classes, workers, int(args.block_mib * 2**20), dtype, args.seed)
    rows = shard.labels.shape[0]
    chunk_rows = default_chunk_rows(num_classes)

    stats_clock = Clock()
    local = ClassStats.empty(num_classes)
    for labels, _, probs in shard.blocks(dtype):
        local = stats_clock(
            local.merge, stats_clock(accumulate_stats, probs, labels, chunk_rows, args.threads)
        )
        del probs  # the next block is generated without this one alive

    merge_clock = Clock()
    moments: ClassMoments = merge_clock(all_reduce_moments, local, workers)

    flips_clock = Clock()
    tables: list[FlipTable] = []
    found: list[Candidates] = []
    for labels, indices, probs in shard.blocks(dtype):
        tables.append(
            flips_clock(
                flips_for_rows,
                probs,
                labels,
                indices,
                moments,
                args.threshold,
                args.seed,
                chunk_rows,
                args.threads,
            )
        )
        found.append(
            flips_clock(
                candidates_for_rows, probs, labels, indices, moments, args.t_min, chunk_rows, args.threads
            )
        )
        del probs
    table = flips_clock(FlipTable.concat, tables)
    candidates = flips_clock(Candidates.concat, found, args.t_min)
    peak = peak_rss() - baseline

    swept = flips_from_candidates(candidates, moments.prior, args.threshold, args.seed)
    if not all(np.array_equal(getattr(swept, f), getattr(table, f)) for f in ("index", "source", "target")):
        raise SystemExit(
            f"N={num_samples} C={num_classes} W={workers}: flips from candidates != flips_for_rows"
        )
    return {
        "rows": rows,
        "entries": rows * num_classes,
        "block_bytes": min(shard.block_rows, rows) * num_classes * dtype.itemsize,
        "dense_bytes": rows * num_classes * dtype.itemsize,
        "stats_s": stats_clock.wall,
        "merge_s": merge_clock.wall,
        "flips_s": flips_clock.wall,
        "wall_s": stats_clock.wall + merge_clock.wall + flips_clock.wall,
        "cpu_s": stats_clock.cpu + merge_clock.cpu + flips_clock.cpu,
        "merge_cpu_s": merge_clock.cpu,
        "peak_bytes": peak,
        "flips": len(table),
        "candidates": len(candidates),
    }


def warm_up(args: argparse.Namespace) -> None:
    """A tiny point first, so one-time costs (NumPy's lazy set-up, first-touch pages) fall outside the timing."""
    run_point(4_000, 20, 2, args)


def spawn_point(num_samples: int, num_classes: int, workers: int) -> dict[str, float]:
    """run_point in a fresh interpreter (this script with --point), so each point's RSS high-water mark is its own."""
    command = [
        sys.executable,
        __file__,
        *sys.argv[1:],
        "--point",
        str(num_samples),
        str(num_classes),
        str(workers),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"point N={num_samples} C={num_classes} W={workers} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def describe(num_samples: int, num_classes: int, workers: int, p: dict[str, float]) -> str:
    return (
        f"N={num_samples:>11,} C={num_classes:>6,} W={workers:>4} | shard {p['rows']:>9,} rows "
        f"({p['dense_bytes'] / 2**30:6.2f} GiB dense) | stats {p['stats_s']:7.2f} s  merge {p['merge_s']:6.3f} s  "
        f"flips+candidates {p['flips_s']:7.2f} s | worker {p['wall_s']:7.2f} s wall {p['cpu_s']:7.2f} s CPU "
        f"(merge {p['merge_cpu_s']:.3f}) | "
        f"{1e9 * p['wall_s'] / p['entries']:5.2f} ns/entry | peak RSS +{p['peak_bytes'] / 2**20:6.1f} MiB "
        f"(block {p['block_bytes'] / 2**20:.1f} MiB) | {p['flips']:,} flips, {p['candidates']:,} candidates "
        f"(x{workers} = {p['candidates'] * workers * 32 / 2**30:.2f} GiB gathered)"
    )


def fit_exponent(x: list[float], y: list[float]) -> float:
    """Slope b of log y = a + b log x (least squares); nan with fewer than two distinct x."""
    if len(set(x)) < 2:
        return float("nan")
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    """'1e5x1e3,1e7x1e4' -> ((100000, 1000), (10000000, 10000))."""
    try:
        return tuple(tuple(int(float(v)) for v in item.split("x")) for item in text.split(","))  # type: ignore[misc]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"sizes are NxC pairs separated by commas, e.g. 1e5x1e3: {exc}"
        ) from exc


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="CI-sized smoke run: N x C up to 4e4 x 400, W in 2, 8"
    )
    parser.add_argument("--sizes", type=parse_sizes, default=None, help="NxC pairs, e.g. 1e5x1e3,1e7x1e4")
    parser.add_argument("--workers", default=None, help="simulated worker counts W, e.g. 8,64,512")
    parser.add_argument("--threads", type=int, default=1, help="threads per simulated worker (engine blocks)")
    parser.add_argument(
        "--dtype", choices=("float32", "float16"), default="float32", help="infer.predictions_dtype"
    )
    parser.add_argument(
        "--threshold", type=float, default=14.5, help="flip threshold (infer.threshold default)"
    )
    parser.add_argument(
        "--t-min", type=float, default=10.5, help="candidates' t_min (configs' candidates_t_min)"
    )
    parser.add_argument(
        "--block-mib", type=float, default=None, help="generated block size, MiB (16; quick: 1)"
    )
    parser.add_argument(
        "--max-shard-entries", type=float, default=2e9, help="skip points whose shard has more R x C entries"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and of the flips")
    parser.add_argument("--point", type=int, nargs=3, metavar=("N", "C", "W"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.t_min > args.threshold:
        parser.error(f"--t-min {args.t_min} must be <= --threshold {args.threshold}")
    if args.block_mib is None:
        args.block_mib = 1.0 if args.quick else 16.0
    if args.point:  # a child: one point, one JSON line
        warm_up(args)
        print(json.dumps(run_point(*args.point, args)))
        return
    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    workers = (
        [int(w) for w in args.workers.split(",")]
        if args.workers
        else (QUICK_WORKERS if args.quick else WORKERS)
    )

    print(
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; {args.threads} thread(s) per "
        f"simulated worker; {args.dtype} predictions; threshold {args.threshold}, t_min {args.t_min}; "
        f"peak = RSS high-water mark above the worker's RSS before its shard"
    )
    points: list[dict[str, float]] = []
    for num_samples, num_classes in sizes:
        for w in workers:
            rows = num_samples // w
            if rows < num_classes:
                print(
                    f"N={num_samples:>11,} C={num_classes:>6,} W={w:>4} | skipped: {rows} rows per shard < C"
                )
                continue
            if rows * num_classes > args.max_shard_entries:
                print(
                    f"N={num_samples:>11,} C={num_classes:>6,} W={w:>4} | skipped: shard > --max-shard-entries"
                )
                continue
            points.append(spawn_point(num_samples, num_classes, w))
            print(describe(num_samples, num_classes, w, points[-1]), flush=True)
    if not points:
        raise SystemExit("no point ran: every (N, C, W) was skipped")
    large = [p for p in points if p["entries"] >= LARGE_SHARD]

    def fit(chosen: list[dict[str, float]], seconds) -> float:
        return fit_exponent([p["entries"] for p in chosen], [seconds(p) for p in chosen])

    exponent = fit(points, lambda p: p["wall_s"])
    cpu_exponent = fit(points, lambda p: p["cpu_s"])
    shard_cpu_exponent = fit(points, lambda p: p["cpu_s"] - p["merge_cpu_s"])
    large_cpu_exponent = fit(large, lambda p: p["cpu_s"])
    print(
        f"fit over {len(points)} points, time per worker ~ (N C / W)^b: b = {exponent:.3f} wall, {cpu_exponent:.3f} "
        f"CPU, {shard_cpu_exponent:.3f} CPU without the merge, {large_cpu_exponent:.3f} CPU over the {len(large)} "
        f"shards of >= {LARGE_SHARD:.0e} entries; load average {os.getloadavg()[0]:.2f} at the end"
    )
    largest = max(points, key=lambda p: p["entries"])
    print(
        f"flips_scale_exponent={exponent:.3f} flips_scale_cpu_exponent={cpu_exponent:.3f} "
        f"flips_scale_cpu_exponent_large={large_cpu_exponent:.3f} largest_worker_s={largest['wall_s']:.2f} "
        f"largest_peak_mib={largest['peak_bytes'] / 2**20:.1f}"
    )


if __name__ == "__main__":
    main()
