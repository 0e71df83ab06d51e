"""Sharded two-pass inference -> exact global statistics -> LNR flips, on Ray Train workers.

Each of W workers predicts its contiguous shard of the training split `passes` times (under inference mode),
accumulating softmax sums in a dense array filled by dataset index (padding duplicates dropped by index), and
checks that every index of its shard was seen exactly `passes` times. It computes the engine's class statistics
for its rows, ONE all-reduce sums them, every worker derives the same global moments and draws the flips of its
own rows; rank 0 gathers the flip tables and writes flips.npz + summary.json atomically in <run_dir>/infer/.
Because the statistics are exact integer sums and the draws are keyed by (seed, index, class), the flips do not
depend on W. With `save_predictions`, each worker writes its rows into one predictions.npy (row i = dataset
index i) that rank 0 renames into place once complete.

Iterated LNR (lnr_dist/rounds.py) runs the same job for round r >= 2 with round r-1's stage-2 checkpoint
(infer.checkpoint), the labels round r-1 left (`labels`: statistics, prior and flips are those labels'), round
r's draws (`round`) and an output folder of the round's (`out`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
import torch.nn.functional as F

from ..core import config as config_lib
from ..core import storage
from ..core.dist import all_gather_arrays, all_reduce_sum, barrier, gather_arrays
from ..core.errors import UserError
from ..core.meter import peak_rss_mib
from ..core.progress import progress
from ..data.loader import LoaderSpec, build_loader
from ..data.manifest import GROUPS, Manifest
from ..data.sampling import shard_bounds
from ..data.splits import load_train_split, noise_record
from ..experiment import ExperimentConfig
from ..lnr import (
    ClassMoments,
    ClassStats,
    FlipTable,
    accumulate_stats,
    candidates_for_rows,
    class_list,
    default_chunk_rows,
    empty_classes,
    flips_for_rows,
)
from ..models.checkpoint import load_model
from ..models.network import Network
from ..runtime.faults import inject_fault
from ..runtime.raycluster import run_workers, worker_setup
from ..runtime.shared_rows import partial_path, write_shared_rows
from ..runtime.usage import return_freed_memory
from .flips_job import build_summary, write_flip_outputs

log = logging.getLogger(__name__)

DALI_AUGMENT_NOTE = (
    "DALI draws crops and flips from per-pipeline random streams: with augment=train and loader=dali the "
    "predictions, and so the flips, depend on the number of workers. Use loader=torch (augmentation keyed by "
    "seed, index and pass) or augment=eval for flips that are the same for any worker count."
)


def checkpoint_path(cfg: ExperimentConfig) -> Path:
    return cfg.layout.backbone_checkpoint(cfg.infer.checkpoint)


def run_inference(
    cfg: ExperimentConfig, out: Path | None = None, labels: Path | None = None, round: int = 1
) -> dict[str, Any]:
    """Driver: check inputs, run the workers, return summary.json.

    `out` replaces infer/; `labels` is an (N,) int64 .npy replacing the training split's labels (row i = dataset
    index i) and `round` the LNR round of the draws: iterated LNR's re-prediction (module docstring). Raises
    UserError naming the labels file when its shape or values do not fit the split.
    """
    cfg = cfg.with_absolute_paths()
    cfg.check_global_batch("infer.batch_size")
    split = load_train_split(cfg.data)
    if labels is not None:
        given = np.load(labels)
        if given.shape != (len(split),) or given.min() < 0 or given.max() >= cfg.data.num_classes:
            raise UserError(f"{labels}: {given.shape} labels, need ({len(split)},) in [0, {cfg.data.num_classes}) "
                            f"(one per line of {split.file})")  # fmt: skip
    load_model(cfg.model, cfg.data.num_classes, checkpoint_path(cfg))
    out = Path(out) if out is not None else cfg.layout.infer
    partial_path(out / "predictions.npy").unlink(missing_ok=True)  # left by a run that failed mid-write
    config_lib.save_resolved(cfg, out)
    loop_config = {"config": config_lib.to_dict(cfg), "out": str(out), "round": round,
                   "labels": None if labels is None else str(labels)}  # fmt: skip
    name = "infer" if round == 1 else f"infer_round{round}"
    run_workers(infer_worker, loop_config, cfg.ray, name, cfg.layout.ray, out)
    return json.loads((out / "summary.json").read_text())


def predict_shard(
    model: Network,
    loader,
    start: int,
    stop: int,
    passes: int,
    device: torch.device,
    train_bn: bool,
    on_pass=None,
    on_batch=None,
) -> tuple[np.ndarray, int, list[float]]:
    """(stop - start, C) float32 mean softmax over `passes` passes for dataset indices [start, stop) (summed and
    divided in that one array: the job's memory for its predictions is R x C x 4 bytes), the
    number of forward passes run and the seconds of each pass. Raises when any index was not seen exactly
    `passes` times. `on_pass(p)` is called before pass p, `on_batch(n)` after each batch with its n kept images."""
    num_classes = model.classifier.out_features
    sums = np.zeros((stop - start, num_classes), dtype=np.float32)
    seen = np.zeros(stop - start, dtype=np.int64)
    forwards = 0
    pass_seconds = []
    model.train(train_bn)
    grad_mode = (
        torch.no_grad() if train_bn else torch.inference_mode()
    )  # BN updates its buffers in train mode
    for p in range(passes):
        if on_pass is not None:
            on_pass(p)
        loader.set_epoch(p)
        began = time.perf_counter()
        visited = np.zeros(stop - start, dtype=bool)
        for batch in loader:
            local = batch.indices.numpy() - start
            if local.size and (local.min() < 0 or local.max() >= stop - start):
                raise RuntimeError(
                    f"the loader returned an index outside this worker's shard [{start}, {stop})"
                )
            _, first = np.unique(local, return_index=True)
            keep = np.zeros(local.size, dtype=bool)
            keep[first] = True
            keep &= ~visited[local]  # padding duplicates are dropped by index
            if not keep.any():
                continue
            visited[local[keep]] = True
            with grad_mode:
                logits = model(batch.images[torch.from_numpy(keep).to(batch.images.device)].to(device))
                probs = F.softmax(logits.float(), dim=1).cpu().numpy()
            sums[local[keep]] += probs
            seen[local[keep]] += 1
            forwards += int(keep.sum())
            if on_batch is not None:
                on_batch(int(keep.sum()))
        pass_seconds.append(time.perf_counter() - began)
    wrong = np.flatnonzero(seen != passes)
    if wrong.size:
        i = int(wrong[0])
        raise RuntimeError(
            f"{wrong.size} samples were not seen exactly {passes} times, e.g. index {start + i} ({seen[i]} times)"
        )
    sums /= passes  # in place: the shard's one (R, C) array is all this job holds of its predictions
    return sums, forwards, pass_seconds


def global_moments(predictions: np.ndarray, labels: np.ndarray, chunk_rows: int, where: str) -> ClassMoments:
    """The flip rule's moments from this worker's (R, C) predictions and (R,) labels and every other worker's,
    through ONE all-reduce of the exact statistics (a no-op outside torch.distributed).

    Raises UserError naming `where` when a class has no sample in the GLOBAL counts. A worker's own rows may
    lack classes (a shard of a class-sorted split does), so nothing is checked before the all-reduce.
    """
    local = accumulate_stats(predictions, labels, chunk_rows)
    moments = ClassStats.from_array(all_reduce_sum(local.to_array())).moments()  # the one all-reduce
    empty = empty_classes(moments.counts)
    if empty.size:
        raise UserError(
            f"{where}: class(es) {class_list(empty)} have no training sample: LNR's prior would make an empty "
            "class the rarest and move samples into it; fix the split or data.num_classes"
        )
    return moments


def infer_worker(loop_config: dict[str, Any]) -> None:
    cfg = config_lib.from_dict(ExperimentConfig, loop_config["config"], "<ray worker config>")
    ctx, device = worker_setup(cfg.ray)
    # this job holds its shard's R x C predictions: freed temporaries go back to the system rather than stay
    # resident beside them (measured in benchmarks/bench_scale.py; the training jobs keep glibc's defaults,
    # which are faster for their many mid-sized temporaries)
    return_freed_memory()
    icfg = cfg.infer
    seed = cfg.seed if icfg.seed is None else icfg.seed
    out = Path(loop_config.get("out") or cfg.layout.infer)
    lnr_round = int(loop_config.get("round", 1))
    split = load_train_split(cfg.data)
    num_samples, num_classes = len(split), cfg.data.num_classes
    # the labels LNR flips: the split's, or (iterated LNR) the labels the previous round left
    all_labels = split.labels if loop_config.get("labels") is None else np.load(loop_config["labels"])
    path = checkpoint_path(cfg)
    model = load_model(cfg.model, cfg.data.num_classes, path).to(device)
    spec = LoaderSpec(
        icfg.batch_size // ctx.world_size, "sequential", augment=icfg.augment == "train", seed=seed
    )
    loader = build_loader(cfg.data, split, spec, ctx)
    start, stop = shard_bounds(num_samples, ctx.rank, ctx.world_size)

    began = time.perf_counter()
    desc = (
        f"infer ({icfg.passes} passes)"
        if lnr_round == 1
        else f"infer round {lnr_round} ({icfg.passes} passes)"
    )
    on_batch = progress(desc, icfg.passes * num_samples, ctx, cfg.logging.log_every_s)
    mean_probs, forwards, pass_seconds = predict_shard(
        model, loader, start, stop, icfg.passes, device, icfg.bn_mode == "train",
        on_pass=lambda p: inject_fault(cfg.fault, ctx, p, out), on_batch=on_batch,
    )  # fmt: skip
    on_batch.close()
    predict_seconds = time.perf_counter() - began
    # Flips are computed from exactly what save_predictions stores, so stored predictions reproduce them.
    predictions = mean_probs.astype(icfg.predictions_dtype, copy=False)
    # narrowed to float16, the float32 array goes now (astype writes straight into its output: no third copy)
    del mean_probs
    labels, indices = all_labels[start:stop], np.arange(start, stop, dtype=np.int64)
    chunk_rows = default_chunk_rows(num_classes)
    moments = global_moments(predictions, labels, chunk_rows, split.file)
    table = flips_for_rows(
        predictions, labels, indices, moments, icfg.threshold, seed, chunk_rows, round=lnr_round
    )
    # flips and candidates to rank 0 only, which writes them (2.9 M candidates at iNaturalist's shape)
    parts = [gather_arrays(a) for a in (table.index, table.source, table.target)]
    candidates = None
    if icfg.candidates_t_min is not None:
        found = candidates_for_rows(predictions, labels, indices, moments, icfg.candidates_t_min, chunk_rows)
        gathered = [gather_arrays(getattr(found, f)) for f in ("index", "label", "cls", "z")]
        candidates = [np.concatenate(g) for g in gathered] if ctx.is_main else None
    totals = all_reduce_sum(np.array([forwards, predict_seconds, 0.0]))
    pass_times = all_gather_arrays(np.array(pass_seconds))
    worker_nodes = all_gather_arrays(np.array([ray.get_runtime_context().get_node_id()]))
    peak_mb = all_gather_arrays(np.array([peak_rss_mib()]))  # MiB, as workers.json's peak_rss_mib

    if icfg.save_predictions:
        shape = (num_samples, num_classes)
        write_shared_rows(out / "predictions.npy", shape, predictions.dtype, start, predictions, ctx)

    if ctx.is_main:
        flips = FlipTable.concat([FlipTable(*(p[r] for p in parts)) for r in range(ctx.world_size)])
        extra: dict[str, Any] = {}
        if icfg.save_predictions:
            storage.write_npy(out / "labels.npy", all_labels)
            storage.write_npy(out / "indices.npy", np.arange(num_samples, dtype=np.int64))
            saved = np.load(out / "predictions.npy", mmap_mode="r")
            inputs_sha = storage.sha256_arrays(saved, all_labels, np.arange(num_samples, dtype=np.int64))
            extra["predictions"] = str(out / "predictions.npy")
        else:
            inputs_sha = storage.sha256_file(path)
        if candidates is not None:
            storage.write_npz(
                out / "candidates.npz", index=candidates[0], label=candidates[1], cls=candidates[2], z=candidates[3],
                t_min=np.array(icfg.candidates_t_min), prior=moments.prior, seed=np.array(seed),
                round=np.array(lnr_round),
            )  # fmt: skip
            extra["candidates"] = {"file": str(out / "candidates.npz"), "t_min": icfg.candidates_t_min,
                                   "count": int(candidates[0].size), "dense_entries": num_samples * num_classes}  # fmt: skip
        # groups from the clean counts under data.label_noise (else from the labels this round flips)
        manifest = Manifest.from_labels(
            all_labels, num_classes, split.clean_labels, noise_record(split, num_classes)
        )
        after = flips.counts_after(moments.counts)
        summary = build_summary(
            moments, flips, icfg.threshold, seed, inputs_sha, round=lnr_round,
            passes=icfg.passes, augment=icfg.augment, bn_mode=icfg.bn_mode, loader=cfg.data.loader,
            world_size=ctx.world_size, checkpoint=str(path), checkpoint_sha256=storage.sha256_file(path),
            predictions_dtype=icfg.predictions_dtype, forwards_per_sample=float(totals[0]) / num_samples,
            predict_seconds_max_worker=float(totals[1]) / ctx.world_size,
            images_per_second=float(totals[0]) / max(predict_seconds, 1e-9),
            wall_seconds=time.perf_counter() - began,
            ray_node_per_worker=[str(a[0]) for a in worker_nodes],
            peak_rss_mb_per_worker=[float(a[0]) for a in peak_mb],
            pass_seconds_per_worker=[a.tolist() for a in pass_times],
            groups={g: {"before": int(moments.counts[manifest.group_classes(g)].sum()),
                        "after": int(after[manifest.group_classes(g)].sum())} for g in GROUPS},
            train_labels_sha256=storage.sha256_arrays(all_labels), label_noise=noise_record(split, num_classes),
            augmentation_independent_of_workers=not (icfg.augment == "train" and cfg.data.loader == "dali"),
            **({"note": DALI_AUGMENT_NOTE} if icfg.augment == "train" and cfg.data.loader == "dali" else {}),
            **extra,
        )  # fmt: skip
        write_flip_outputs(out, flips, summary)
        log.info(
            "infer: %d flips at threshold %s from %d workers", len(flips), icfg.threshold, ctx.world_size
        )
    barrier()
