"""`reproduce` at ImageNet-LT scale with a tiny model: per step, wall time, images/s, Ray start-up and the Ray
workers' memory, on a generated set of ImageNet-LT's shape (issue 18, item 1).

Run: .venv/bin/python benchmarks/bench_scale.py [--classes 1000] [--train 115846] [--loader dali]
     [--workers 2] [--methods mislas,lnr] [--cache DIR] [--out DIR] [--json FILE] [key=value ...]
     iNaturalist shape: ... --classes 8142 --train 437513 (1,000 down to 2 per class, 3 val / 3 test per class)

The set (built once, cached under --cache, default ~/.cache/lnr-dist/bench_scale/<classes>x<train>) has
ImageNet-LT's layout: train/nXXXXXXXX/nXXXXXXXX_k.JPEG for training and validation images (ImageNet-LT's
validation images come from ImageNet's training set), val/ILSVRC2012_val_XXXXXXXX.JPEG for test images, and
ImageNet_LT_{train,val,test}.txt of `<path> <label>` lines. Training counts follow `lt_profile`: sorted
descending from --max-per-class to --min-per-class, summing to exactly --train, with ImageNet-LT's
many/medium/few split (385/479/136 at its shape; the groups of lnr_dist.data.manifest). Validation and test are
balanced (--val-per-class, --test-per-class). Images are tiny JPEGs (--image-size, 32): a class colour and a
stripe pattern of the class plus per-image noise and phase, written by --build-processes processes; every image
is written under a temporary name and renamed, and `complete.json` is written last, so an interrupted build
resumes where it stopped and a finished one is reused.

`reproduce` runs in this process (lnr_dist.reproduce.runner.reproduce) on configs/mini.yaml with key=value
overrides (the CLI's machinery): data.* at the set, small_cnn, 1 epoch of stage 1 and stage 2, a two-threshold
sweep, 1 seed, no binary task, --workers Ray workers of 1 CPU. In-process because reproduce's `execute` hook is
then the benchmark's: it times each job from its call (the step's start, the start of "Ray start-up") to its
return, where a subprocess would leave only the steps' records (their end to the second).

iNaturalist's shape (--classes 8142 --train 437513): 1,000 down to 2 training images per class, 3 val / 3 test
per class, infer.save_predictions false (--candidates-only: the sweep reads the sparse candidates; the dense
437,513 x 8,142 predictions.npy would be 14.2 GB in float32, 7.1 GB in float16) and float32 predictions: in
memory, float16 predictions are a copy beside the float32 mean (1.5 x the shard matrix), with no file left to
halve. Each inference worker holds its dense shard matrix (rows x C float32; the line before the build prints
it): 6.6 GiB per worker at 2 workers, 13.3 GiB in all, which fits a 24 GiB machine.

Per step: wall seconds (<run>/seed<k>/steps/<step>.json), images/s (the images the step's Ray Train workers
processed over the step's seconds), Ray start-up (step start to the LAST worker's first batch: the job runs at
full width only then; split into driver + Ray Train + ours, see startup_parts), peak RSS per worker and its
growth over the worker's start-up RSS (RSS at its first batch). The workers' figures are the workers.json every Ray Train job writes (lnr_dist/runtime/usage.py), read
with its read_workers and joined to the step during which the job began (the sweep extracts the features the
features step then finds cached). Inference's extra memory per worker is that growth; r divides it by the
worker's dense shard matrix (shard rows x C x 4 bytes, rows from shard_bounds). Targets (the issue's): r <= 1.5,
no step's Ray start-up above 10 s. A step that ran no Ray Train job (a method on cached features) has its wall
seconds only.

Last line: scale_wall_s=<s> infer_extra_mib_per_worker=<MiB> infer_extra_vs_shard_matrix=<r>
(reproduce's wall seconds; the largest growth over the inference workers; the largest r)
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lnr_dist.core import storage
from lnr_dist.data.manifest import FEW_BELOW, MANY_ABOVE
from lnr_dist.data.sampling import shard_bounds
from lnr_dist.runtime.usage import WORKERS_FILE, read_workers

REPO = Path(__file__).resolve().parents[1]
PREFIX = "ImageNet_LT"
MARKER = "complete.json"  # written last: the set is whole
FORMAT = 1  # bump when the images or the layout change, so an old cache is rebuilt

# ImageNet-LT (Liu et al., OLTR, CVPR 2019): 1,000 classes, 115,846 training images, 1,280 down to 5 per class,
# 385 many / 479 medium / 136 few classes, 20 val / 50 test per class
REF_CLASSES, REF_TRAIN, REF_MAX, REF_MIN, REF_MANY, REF_FEW = 1000, 115_846, 1280, 5, 385, 136
# iNaturalist 2018: 8,142 classes, 437,513 training images, 1,000 down to 2 per class, 3 val / 3 test per class
INAT_CLASSES, INAT_TRAIN = 8142, 437_513
SHAPE_DEFAULTS = {
    (REF_CLASSES, REF_TRAIN): {"max_per_class": REF_MAX, "min_per_class": REF_MIN, "val": 20, "test": 50},
    (INAT_CLASSES, INAT_TRAIN): {"max_per_class": 1000, "min_per_class": 2, "val": 3, "test": 3},
}
OTHER_DEFAULTS = {"max_per_class": None, "min_per_class": REF_MIN, "val": 20, "test": 50}

# The profile's anchors, from ImageNet-LT: on the rank axis x = rank / (C - 1), the last many class ends at
# X_MANY and the last medium class at X_FEW; in log count, relative to log(n_min)..log(n_max), the many/medium
# boundary (MANY_ABOVE + 1, the smallest many count) sits at H_MANY and the medium/few one (FEW_BELOW) at H_FEW.
X_MANY = (REF_MANY - 0.5) / (REF_CLASSES - 1)
X_FEW = (REF_CLASSES - REF_FEW - 0.5) / (REF_CLASSES - 1)
H_MANY = math.log((MANY_ABOVE + 1) / REF_MIN) / math.log(REF_MAX / REF_MIN)
H_FEW = math.log(FEW_BELOW / REF_MIN) / math.log(REF_MAX / REF_MIN)
LOG_P_RANGE = (-7.0, 7.0)  # the head exponent's search range (log p)


def _profile_counts(classes: int, n_max: int, n_min: int, p: float) -> np.ndarray:
    """(classes,) int64 counts of the profile with head exponent p, floored (not yet summing to a target).

    log-height h(x) in [0, 1] (count = n_min (n_max / n_min)^h): on the head [0, X_MANY], H_MANY + (1 - H_MANY)
    (1 - x / X_MANY)^p (p > 1: the fast early fall of ImageNet-LT's head, a Pareto-like decay); linear in x
    from H_MANY to H_FEW on the medium classes and from H_FEW to 0 on the few ones (ImageNet-LT's medium and
    few classes fall about geometrically).
    """
    x = np.arange(classes) / max(classes - 1, 1)
    head = H_MANY + (1.0 - H_MANY) * np.clip(1.0 - x / X_MANY, 0.0, 1.0) ** p
    medium = H_FEW + (H_MANY - H_FEW) * (X_FEW - x) / (X_FEW - X_MANY)
    few = H_FEW * (1.0 - x) / (1.0 - X_FEW)
    h = np.where(x <= X_MANY, head, np.where(x <= X_FEW, medium, few))
    return np.floor(n_min * (n_max / n_min) ** h + 1e-9).astype(np.int64)


def _solve_exponent(classes: int, train: int, n_max: int, n_min: int) -> float | None:
    """The head exponent whose floored counts sum to at most `train`, as close as bisection gets; None when
    `train` lies outside what the profile can hold with these bounds."""
    lo, hi = LOG_P_RANGE
    if _profile_counts(classes, n_max, n_min, math.exp(lo)).sum() < train:
        return None  # even the fullest head holds fewer
    if _profile_counts(classes, n_max, n_min, math.exp(hi)).sum() > train:
        return None  # even the thinnest head holds more
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if _profile_counts(classes, n_max, n_min, math.exp(mid)).sum() > train:
            lo = mid
        else:
            hi = mid
    return math.exp(hi)


@functools.cache
def reference_exponent() -> float:
    """The head exponent at ImageNet-LT's own shape (about 3.7)."""
    p = _solve_exponent(REF_CLASSES, REF_TRAIN, REF_MAX, REF_MIN)
    assert p is not None
    return p


def default_max_per_class(classes: int, train: int, n_min: int = REF_MIN) -> int:
    """1,280 x scale: the largest n_max at which ImageNet-LT's profile (its head exponent, this n_min) holds at
    most `train` images in `classes` classes; 1,280 at ImageNet-LT's shape."""
    p = reference_exponent()
    lo, hi = n_min + 1, max(n_min + 1, train)
    if _profile_counts(classes, lo, n_min, p).sum() > train:
        raise ValueError(f"{train} training images cannot fill {classes} classes of at least {n_min} images")
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if _profile_counts(classes, mid, n_min, p).sum() <= train else (lo, mid - 1)
    return lo


def lt_profile(classes: int, train: int, n_max: int | None = None, n_min: int = REF_MIN) -> np.ndarray:
    """(classes,) int64 training images per class: sorted descending, counts[0] = n_max, counts[-1] = n_min,
    summing to exactly `train`, shaped like ImageNet-LT's profile (385 / 479 / 136 many / medium / few classes
    at classes 1000, train 115846, n_max 1280, n_min 5).

    The shape is `_profile_counts`' (ImageNet-LT's group boundaries at the same relative ranks and log-heights)
    with the head exponent solved by bisection for the sum; the few images bisection leaves go one each to the
    classes after the first. n_max None: `default_max_per_class`. Raises ValueError when no exponent fits.
    """
    if classes < 3:
        raise ValueError(f"need at least 3 classes, got {classes}")
    if n_max is None:
        n_max = default_max_per_class(classes, train, n_min)
    if not 1 <= n_min < n_max:
        raise ValueError(f"need 1 <= min per class < max per class, got {n_min} and {n_max}")
    p = _solve_exponent(classes, train, n_max, n_min)
    if p is None:
        raise ValueError(
            f"{train} training images do not fit {classes} classes from {n_max} down to {n_min} with "
            "ImageNet-LT's profile: change --train, --max-per-class or --min-per-class"
        )
    counts = _profile_counts(classes, n_max, n_min, p)
    left = train - int(counts.sum())
    if not 0 <= left < classes - 1 or (left and counts[1] >= n_max):
        raise ValueError(f"the profile's bisection left {left} images it cannot place")
    counts[1 : 1 + left] += 1  # the earliest classes after the first: the order and the bounds hold
    return counts


def group_split(counts: np.ndarray) -> tuple[int, int, int]:
    """(many, medium, few) classes of (C,) counts by lnr_dist.data.manifest's thresholds."""
    many = int((counts > MANY_ABOVE).sum())
    few = int((counts < FEW_BELOW).sum())
    return many, len(counts) - many - few, few


@dataclass(frozen=True)
class SetSpec:
    """What the cached set holds; complete.json stores it, and another spec rebuilds the folder."""

    classes: int
    train: int
    max_per_class: int
    min_per_class: int
    val_per_class: int
    test_per_class: int
    image_size: int = 32
    seed: int = 0
    format: int = FORMAT

    def counts(self) -> np.ndarray:
        return lt_profile(self.classes, self.train, self.max_per_class, self.min_per_class)


@dataclass(frozen=True)
class BuiltSet:
    root: Path
    splits: dict[str, Path]  # train, val, test
    counts: np.ndarray
    seconds: float  # 0 when reused
    reused: bool


def synset(label: int) -> str:
    """ImageNet-style folder name of a class: n + 8 digits, in label order."""
    return f"n{10_000_000 + label:08d}"


def class_look(label: int) -> tuple[np.ndarray, float, float]:
    """(3,) float colour, stripe angle and stripe frequency of a class: a golden-ratio walk over hues, 8
    angles and 4 frequencies, so neighbouring labels differ in every part."""
    hue = (label * 0.6180339887) % 1.0
    colour = 127.5 + 100.0 * np.cos(2 * np.pi * (hue + np.array([0.0, 1 / 3, 2 / 3])))
    return colour, np.pi * (label % 8) / 8, 0.5 + 0.5 * ((label // 8) % 4)


def image_pixels(label: int, key: tuple[int, ...], size: int, seed: int) -> np.ndarray:
    """(size, size, 3) uint8: the class's colour and stripes, with a phase and noise drawn from (seed, key)."""
    rng = np.random.default_rng([seed, *key])
    colour, angle, frequency = class_look(label)
    yy, xx = np.mgrid[0:size, 0:size] * (2 * np.pi / size)
    wave = np.sin(frequency * (np.cos(angle) * xx + np.sin(angle) * yy) * 2 + rng.uniform(0, 2 * np.pi))
    pixels = colour[None, None, :] * (0.75 + 0.25 * wave[..., None])
    pixels += rng.normal(0.0, 12.0, size=pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _split_entries(spec: SetSpec, counts: np.ndarray) -> dict[str, list[tuple[str, int, tuple[int, ...]]]]:
    """split -> [(relative path, label, image key)]: training images 0..n_c-1 of each class folder, then its
    validation images; test images numbered like ImageNet's validation files."""
    entries: dict[str, list[tuple[str, int, tuple[int, ...]]]] = {"train": [], "val": [], "test": []}
    test_number = 0
    for label, count in enumerate(counts.tolist()):
        name = synset(label)
        for k in range(count + spec.val_per_class):
            split = "train" if k < count else "val"
            entries[split].append((f"train/{name}/{name}_{k}.JPEG", label, (0, label, k)))
        for _ in range(spec.test_per_class):
            test_number += 1
            entries["test"].append(
                (f"val/ILSVRC2012_val_{test_number:08d}.JPEG", label, (1, label, test_number))
            )
    return entries


def _write_images(root: str, size: int, seed: int, items: list[tuple[str, int, tuple[int, ...]]]) -> int:
    """Write the items' JPEGs that are not there yet (temporary name, then rename); returns how many."""
    written = 0
    for relative, label, key in items:
        path = Path(root) / relative
        if path.is_file():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        Image.fromarray(image_pixels(label, key, size, seed)).save(tmp, format="JPEG", quality=90)
        os.replace(tmp, path)
        written += 1
    return written


def build_set(cache: Path, spec: SetSpec, processes: int = 2, log: Callable[[str], None] = print) -> BuiltSet:
    """The set of `spec` under `cache`: reused when complete.json holds the same spec, else built (resuming
    the images already written)."""
    cache = Path(cache)
    splits = {name: cache / f"{PREFIX}_{name}.txt" for name in ("train", "val", "test")}
    marker = cache / MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("spec") == asdict(spec):
        counts = np.asarray(json.loads(marker.read_text())["counts"], dtype=np.int64)
        return BuiltSet(cache, splits, counts, 0.0, True)
    marker.unlink(missing_ok=True)
    began = time.perf_counter()
    counts = spec.counts()
    entries = _split_entries(spec, counts)
    items = [item for split in ("train", "val", "test") for item in entries[split]]
    log(f"building {len(items):,} {spec.image_size}px JPEGs under {cache} with {processes} process(es)")
    chunks = [items[i : i + 2000] for i in range(0, len(items), 2000)]
    write = functools.partial(_write_images, str(cache), spec.image_size, spec.seed)
    if processes > 1:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            written = sum(pool.imap_unordered(write, chunks))
    else:
        written = sum(map(write, chunks))
    order = np.random.default_rng([spec.seed, 2]).permutation  # mixed classes, like the published split files
    for split, rows in entries.items():
        text = "".join(f"{rows[i][0]} {rows[i][1]}\n" for i in order(len(rows)))
        storage.write_text(splits[split], text)
    seconds = time.perf_counter() - began
    storage.write_json(marker, {"spec": asdict(spec), "counts": counts.tolist(), "seconds": seconds})
    log(f"built in {seconds:.1f} s ({written:,} images written, {len(items) - written:,} resumed)")
    return BuiltSet(cache, splits, counts, seconds, False)


# --- the run ----------------------------------------------------------------------------------------------------


@dataclass
class JobCall:
    """One job reproduce ran through the benchmark's executor: its name, folder and driver times."""

    job: str
    folder: Path
    start_unix: float
    end_unix: float = float("nan")


@dataclass
class TimedExecutor:
    """reproduce's `execute(job, cfg, out)`: the local executor, timed."""

    calls: list[JobCall] = field(default_factory=list)

    def __call__(self, job: str, cfg, out: str | None) -> dict[str, Any]:
        from lnr_dist.jobs import JOBS

        call = JobCall(job, Path(out) if out else job_folder(cfg.layout, job), time.time())
        self.calls.append(call)
        try:
            return JOBS[job](cfg, out)
        finally:
            call.end_unix = time.time()


def job_folder(layout, job: str) -> Path:
    """The folder a job writes to by default (RunLayout)."""
    folders = {"infer": layout.infer, "tune": layout.tune, "features": layout.features}
    return folders.get(job) or layout.stage(job)


def step_folder(seed_cfg, name: str) -> Path:
    """The job folder of a reproduce step: method-<m> -> methods/<m>; <job>[_<backbone>] -> that backbone's
    folder of the job (lnr_dist.reproduce.methods.Step.name)."""
    from lnr_dist.reproduce.methods import JOB_ORDER
    from lnr_dist.stage2.registry import BACKBONES, backbone_config

    if name.startswith("method-"):
        return seed_cfg.layout.method(name.removeprefix("method-"))
    job = next((j for j in JOB_ORDER if name == j or name.startswith(f"{j}_")), None)
    if job is None:
        return seed_cfg.layout.root / name
    backbone = name[len(job) + 1 :] or next(b.name for b in BACKBONES.values() if b.folder == "")
    return job_folder(backbone_config(seed_cfg, backbone).layout, job)


def infer_extra(workers: dict[str, Any], num_samples: int, num_classes: int) -> tuple[float, float]:
    """(largest growth in MiB, largest growth / dense shard matrix) over the inference workers of a
    `read_workers` record; the matrix of rank k is its shard_bounds rows x C x 4 bytes (float32). nan when no
    worker reported a first batch."""
    world = len(workers["workers"])
    extra, ratio = float("nan"), float("nan")
    for worker in workers["workers"]:
        growth = worker["growth_mib"]
        if growth is None:
            continue
        start, stop = shard_bounds(num_samples, int(worker["rank"]), world)
        r = growth * 2**20 / max((stop - start) * num_classes * 4, 1)
        extra = growth if math.isnan(extra) else max(extra, growth)
        ratio = r if math.isnan(ratio) else max(ratio, r)
    return extra, ratio


def ray_startup_s(workers: dict[str, Any], step_start_unix: float) -> float | None:
    """Step start to the last first batch of a `read_workers` record's workers (None when none saw a batch)."""
    if workers["startup_s"] is None:
        return None
    return float(workers["started_unix"]) - step_start_unix + float(workers["startup_s"])


def startup_parts(workers: dict[str, Any], step_start_unix: float) -> dict[str, float] | None:
    """A step's Ray start-up in its three consecutive parts, seconds (None when no worker saw a batch):
    `driver`: step start to run_workers' attempt (the first step starts the local Ray cluster here);
    `ray_train`: the attempt to the last worker's entry into its function (Ray Train's controller, helper actors
    and worker processes start and import, our function's module included); `ours`: from there to the last
    worker's first batch (reading the split, building the model and the loader)."""
    total = ray_startup_s(workers, step_start_unix)
    # the workers that saw a batch: the total's last first batch is one of theirs
    entries = [w["entry_s"] for w in workers["workers"]
               if w.get("entry_s") is not None and w.get("first_batch_s") is not None]  # fmt: skip
    if total is None or not entries:
        return None
    driver = float(workers["started_unix"]) - step_start_unix
    ray_train = max(entries)
    return {"driver": driver, "ray_train": ray_train, "ours": total - driver - ray_train}


def workers_of_calls(root: Path, calls: list[JobCall]) -> dict[int, list[dict[str, Any]]]:
    """call index -> the workers.json records under `root` whose run began during that call, earliest first.

    By time, not by folder: a job may run another's Ray Train job (the sweep extracts the features the features
    step then finds cached), and a folder's record may be left by an earlier step."""
    found: dict[int, list[dict[str, Any]]] = {}
    for path in root.rglob(WORKERS_FILE):
        doc = {**read_workers(path), "folder": str(path.parent)}
        for i, call in enumerate(calls):
            if call.start_unix <= float(doc["started_unix"]) <= call.end_unix:
                found.setdefault(i, []).append(doc)
    return {i: sorted(docs, key=lambda d: float(d["started_unix"])) for i, docs in found.items()}


def step_rows(seed_cfg, calls: list[JobCall], num_samples: int, num_classes: int) -> list[dict[str, Any]]:
    """One row per finished step of the seed folder, in the order the steps ran."""
    by_folder = {call.folder.resolve(): i for i, call in enumerate(calls)}
    docs_of = workers_of_calls(seed_cfg.layout.root, calls)
    rows = []
    for record_path in (seed_cfg.layout.root / "steps").glob("*.json"):
        name = record_path.stem
        record = json.loads(record_path.read_text())
        index = by_folder.get(step_folder(seed_cfg, name).resolve())
        row: dict[str, Any] = {"step": name, "wall_s": float(record["seconds"]), "job": None,
                               "images": None, "images_per_s": None, "ray_startup_s": None,
                               "startup_parts": None, "workers": []}  # fmt: skip
        end = time.mktime(time.strptime(record["finished_at"], "%Y-%m-%dT%H:%M:%S")) + 0.999
        if index is not None:
            call = calls[index]
            row["job"], end = call.job, call.end_unix
            docs = docs_of.get(index, [])
            if docs:
                row["images"] = float(sum(w.get("images") or 0 for d in docs for w in d["workers"]))
                row["ray_startup_s"] = ray_startup_s(docs[0], call.start_unix)
                row["startup_parts"] = startup_parts(docs[0], call.start_unix)
                row["workers"] = [
                    {"job": d.get("job"), "rank": w["rank"], "peak_rss_mib": w.get("peak_rss_mib"),
                     "rss_first_batch_mib": w.get("rss_first_batch_mib"), "growth_mib": w["growth_mib"]}
                    for d in docs for w in sorted(d["workers"], key=lambda w: w["rank"])
                ]  # fmt: skip
                own = [d for d in docs if Path(d["folder"]).resolve() == call.folder.resolve()]
                if call.job == "infer" and own:
                    row["infer_extra_mib"], row["infer_extra_vs_shard"] = infer_extra(
                        own[0], num_samples, num_classes
                    )
        if row["images"]:
            row["images_per_s"] = row["images"] / max(row["wall_s"], 1e-9)
        rows.append((end, row))
    return [row for _, row in sorted(rows, key=lambda pair: pair[0])]


def _idle(loop_config: dict[str, Any]) -> None:
    """An empty job's worker function."""


def ray_train_floor(cfg) -> float:
    """Seconds from an empty Ray Train job's start (run_workers, as every step's job) to its workers' entry
    into their function: Ray Train's own start-up on this cluster, measured beside the steps."""
    from lnr_dist.runtime.raycluster import run_workers

    cfg = cfg.with_absolute_paths()
    out = Path(cfg.run_dir) / "ray_train_floor"
    run_workers(_idle, {}, cfg.ray, "ray_train_floor", cfg.layout.ray, out)
    return max(w["entry_s"] for w in read_workers(out / WORKERS_FILE)["workers"])


def format_table(rows: list[dict[str, Any]]) -> str:
    def number(value, spec: str) -> str:
        return (
            "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)
        )

    def per_worker(row, key: str) -> str:
        values = [number(w[key], ".0f") for w in row["workers"]]
        return "/".join(values) if values else "-"

    def parts(row) -> str:
        split = row.get("startup_parts")
        if split is None:
            return "-"
        return "+".join(format(split[k], ".1f") for k in ("driver", "ray_train", "ours"))

    lines = [
        f"{'step':<22} {'wall s':>8} {'images/s':>9} {'Ray start-up s':>14} {'= driver+Ray Train+ours':<24} "
        f"{'peak RSS MiB per worker':<24} {'growth MiB':<16}"
    ]
    for row in rows:
        lines.append(
            f"{row['step']:<22} {row['wall_s']:>8.1f} {number(row['images_per_s'], '.0f'):>9} "
            f"{number(row['ray_startup_s'], '.1f'):>14} {parts(row):<24} {per_worker(row, 'peak_rss_mib'):<24} "
            f"{per_worker(row, 'growth_mib'):<16}"
        )
    return "\n".join(lines)


def memory_plan(classes: int, train: int, workers: int, dtype: str) -> str:
    """What inference will hold: each worker's dense shard matrix (float32 sums, plus the predictions_dtype
    copy when it is float16), against this machine's memory."""
    rows = max(stop - start for start, stop in (shard_bounds(train, k, workers) for k in range(workers)))
    matrix = rows * classes * 4
    held = matrix * (1.5 if dtype == "float16" else 1.0)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return (
        f"inference: {rows:,} rows x {classes:,} classes per worker = {matrix / 2**30:.2f} GiB dense float32, "
        f"{held / 2**30:.2f} GiB with the {dtype} predictions; x {workers} workers = {workers * held / 2**30:.1f} "
        f"GiB of this machine's {total / 2**30:.1f} GiB"
    )


def experiment_config(built: BuiltSet, args: argparse.Namespace, overrides: list[str]):
    """configs/mini.yaml with the benchmark's overrides, then the user's (`key=value`, as the CLI takes them)."""
    from lnr_dist.core.config import load_config
    from lnr_dist.experiment import ExperimentConfig

    size = args.image_size
    ours = [
        f"data.root={built.root}",
        *(f"data.{split}_split={path}" for split, path in built.splits.items()),
        "data.unlabeled_split=null",
        f"data.num_classes={len(built.counts)}",
        f"data.loader={args.loader}",
        f"data.image_size={size}",
        f"data.resize_size={size}",
        "data.num_threads=1",
        "model.arch=small_cnn",
        f"run_dir={args.out}",
        "stage1.epochs=1",
        "stage1.warmup_epochs=0",
        f"stage1.batch_size={args.batch_size}",
        f"stage1.eval_batch_size={2 * args.batch_size}",
        "stage2.epochs=1",
        f"stage2.batch_size={args.batch_size}",
        f"stage2.eval_batch_size={2 * args.batch_size}",
        f"infer.batch_size={2 * args.batch_size}",
        f"infer.predictions_dtype={args.predictions_dtype}",
        f"infer.save_predictions={'false' if args.candidates_only else 'true'}",
        # the LNR recipe's threshold and t_min at ImageNet-LT's and iNaturalist's shapes (configs/imagenet_lt.yaml,
        # inat2018.yaml), so the sparse candidates are as sparse as in a real run: mini.yaml's t_min 1.0 makes
        # 14% of the N x C entries candidates (measured at 50 x 3000), 500 million at iNaturalist's shape
        "infer.threshold=14.5",
        "infer.candidates_t_min=10.5",
        "tune.thresholds=[10.5, 14.5]",
        "tune.epochs=1",
        f"ray.num_workers={args.workers}",
        "ray.cpus_per_worker=1",
        "ray.max_failures=0",
        f"reproduce.methods=[{args.methods}]",
        "reproduce.seeds=1",
        "reproduce.bootstrap=0",
        "reproduce.binary.enabled=false",
    ]
    return load_config(ExperimentConfig, REPO / "configs" / "mini.yaml", [*ours, *overrides])


def shape_defaults(args: argparse.Namespace) -> None:
    """Fill the options left unset from the shape's defaults (ImageNet-LT's, iNaturalist's, or the scaled ones)."""
    defaults = SHAPE_DEFAULTS.get((args.classes, args.train), OTHER_DEFAULTS)
    inat = (args.classes, args.train) == (INAT_CLASSES, INAT_TRAIN)
    if args.min_per_class is None:
        args.min_per_class = defaults["min_per_class"]
    if args.max_per_class is None:
        args.max_per_class = defaults["max_per_class"] or default_max_per_class(
            args.classes, args.train, args.min_per_class
        )
    if args.val_per_class is None:
        args.val_per_class = defaults["val"]
    if args.test_per_class is None:
        args.test_per_class = defaults["test"]
    # iNaturalist: no predictions.npy (the sweep reads the candidates); float32 (module docstring)
    if args.predictions_dtype is None:
        args.predictions_dtype = "float32"
    if args.candidates_only is None:
        args.candidates_only = inat
    if args.cache is None:
        args.cache = Path.home() / ".cache" / "lnr-dist" / "bench_scale" / f"{args.classes}x{args.train}"
    if args.out is None:
        args.out = Path("runs") / f"bench_scale_{args.classes}x{args.train}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--classes", type=int, default=REF_CLASSES)
    parser.add_argument("--train", type=int, default=REF_TRAIN, help="training images in all")
    parser.add_argument("--max-per-class", type=int, help="1280 (iNat shape 1000; other shapes 1280 x scale)")
    parser.add_argument("--min-per-class", type=int, help="5 (iNat shape 2)")
    parser.add_argument("--val-per-class", type=int, help="20 (iNat shape 3)")
    parser.add_argument("--test-per-class", type=int, help="50 (iNat shape 3)")
    parser.add_argument("--image-size", type=int, default=32, help="side of the generated JPEGs, px")
    parser.add_argument("--cache", type=Path, help="the set's folder (~/.cache/lnr-dist/bench_scale/CxN)")
    parser.add_argument("--build-processes", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument(
        "--out", type=Path, help="reproduce's run folder (runs/bench_scale_CxN), emptied first"
    )
    parser.add_argument("--loader", choices=("dali", "torch"), default="dali")
    parser.add_argument("--workers", type=int, default=2, help="ray.num_workers")
    parser.add_argument("--methods", default="mislas,lnr", help="reproduce.methods")
    parser.add_argument("--batch-size", type=int, default=256, help="global training batch (eval: twice)")
    parser.add_argument(
        "--predictions-dtype", choices=("float16", "float32"), help="infer.predictions_dtype (float32)"
    )
    parser.add_argument(
        "--candidates-only", action=argparse.BooleanOptionalAction, default=None,
        help="infer.save_predictions false: the sweep reads the sparse candidates (default on for iNat's shape)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--verbose", action="store_true", help="Ray's internal lines too")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. stage1.epochs=2"
    )
    args = parser.parse_args()
    shape_defaults(args)

    import shutil

    from lnr_dist.core.logs import install_screen, setup_logging
    from lnr_dist.reproduce.runner import reproduce

    install_screen("INFO", verbose=args.verbose)  # as the CLI: Ray's internal noise off the screen

    spec = SetSpec(args.classes, args.train, args.max_per_class, args.min_per_class, args.val_per_class,
                   args.test_per_class, args.image_size)  # fmt: skip
    counts = spec.counts()
    many, medium, few = group_split(counts)
    print(
        f"shape: {args.classes:,} classes, {args.train:,} training images, {counts[0]} down to {counts[-1]} per "
        f"class; many/medium/few {many}/{medium}/{few} (ImageNet-LT: {REF_MANY}/479/{REF_FEW}); "
        f"{args.val_per_class} val / {args.test_per_class} test per class; {os.cpu_count()} CPUs, load "
        f"{os.getloadavg()[0]:.2f}"
    )
    print(memory_plan(args.classes, args.train, args.workers, args.predictions_dtype))
    built = build_set(args.cache, spec, args.build_processes)
    print(f"set: {built.root} ({'cached' if built.reused else f'built in {built.seconds:.1f} s'})")
    if args.out.exists():
        shutil.rmtree(args.out)  # every step runs: no step is skipped as done before
    cfg = experiment_config(built, args, args.overrides)
    setup_logging()
    executor = TimedExecutor()
    began = time.perf_counter()
    reproduce(cfg, executor)
    wall = time.perf_counter() - began

    seed_cfg = cfg.with_absolute_paths()
    from dataclasses import replace

    seed_cfg = replace(seed_cfg, run_dir=str(seed_cfg.layout.seed(cfg.seed).root))
    rows = step_rows(seed_cfg, executor.calls, args.train, args.classes)
    print(format_table(rows))
    infer_rows = [r for r in rows if "infer_extra_vs_shard" in r]
    extra = max((r["infer_extra_mib"] for r in infer_rows), default=float("nan"))
    ratio = max((r["infer_extra_vs_shard"] for r in infer_rows), default=float("nan"))
    startups = [r["ray_startup_s"] for r in rows if r["ray_startup_s"] is not None]

    def verdict(ok: bool | None) -> str:
        return "not measured" if ok is None else ("met" if ok else "NOT met")

    floor = ray_train_floor(cfg)
    print(
        f"beside it, Ray Train alone: an empty {args.workers}-worker job's workers entered their function "
        f"{floor:.1f} s after its start (the part of every step's start-up before our code runs)"
    )
    ratio_ok = None if math.isnan(ratio) else ratio <= 1.5
    startup_ok = (max(startups) <= 10.0) if startups else None
    print(f"target r <= 1.5: {verdict(ratio_ok)} (r = {ratio:.2f})")
    slowest = max((r for r in rows if r["ray_startup_s"] is not None), key=lambda r: r["ray_startup_s"],
                  default=None)  # fmt: skip
    split = (slowest or {}).get("startup_parts")
    print(
        f"target Ray start-up <= 10 s in every step: {verdict(startup_ok)} "
        f"(largest {max(startups, default=float('nan')):.1f} s"
        + (f", {slowest['step']}: driver {split['driver']:.1f} + Ray Train {split['ray_train']:.1f} + ours "
           f"{split['ours']:.1f} s" if split else "")
        + f"; an empty job's workers entered their function after {floor:.1f} s)"
    )  # fmt: skip
    if args.json:
        storage.write_json(args.json, {
            "shape": asdict(spec), "groups": {"many": many, "medium": medium, "few": few},
            "set": {"root": str(built.root), "reused": built.reused, "build_s": built.seconds},
            "loader": args.loader, "workers": args.workers, "methods": args.methods.split(","),
            "predictions_dtype": args.predictions_dtype, "candidates_only": args.candidates_only,
            "steps": rows, "scale_wall_s": wall, "ray_train_empty_job_entry_s": floor, "infer_extra_mib_per_worker": extra,
            "infer_extra_vs_shard_matrix": ratio,
            "targets": {"ratio_le_1_5": ratio_ok, "ray_startup_le_10_s": startup_ok},
        })  # fmt: skip
    print(
        f"scale_wall_s={wall:.1f} infer_extra_mib_per_worker={extra:.1f} infer_extra_vs_shard_matrix={ratio:.3f}"
    )


if __name__ == "__main__":
    main()
