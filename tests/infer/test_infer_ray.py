"""The sharded inference job on a real local Ray cluster: flips independent of the worker count."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lnr_dist.cli import main
from lnr_dist.core.errors import UserError
from lnr_dist.core.storage import load_flip_table
from lnr_dist.data.sampling import shard_bounds
from lnr_dist.data.splits import load_train_split
from lnr_dist.infer.inference import global_moments, predict_shard, run_inference
from lnr_dist.lnr import compute_flips, flips_from_candidates
from lnr_dist.runtime.usage import WORKERS_FILE, read_workers

from ..conftest import mini_experiment

pytestmark = [pytest.mark.ray, pytest.mark.slow]
THRESHOLD = 1.0


def infer_config(mini_root, run_dir, checkpoint, workers, augment="eval", max_failures=1, **sections):
    return mini_experiment(
        mini_root,
        run_dir,
        infer={
            "checkpoint": str(checkpoint), "threshold": THRESHOLD, "augment": augment, "batch_size": 96,
            "candidates_t_min": 0.0,
        },
        ray={"num_workers": workers, "cpus_per_worker": 0.5, "max_failures": max_failures},
        **sections,
    )  # fmt: skip


@pytest.fixture(scope="module")
def eval_runs(mini_root, tmp_path_factory, stage1_checkpoint):
    runs = {}
    for workers in (1, 2, 3):
        cfg = infer_config(mini_root, tmp_path_factory.mktemp(f"w{workers}"), stage1_checkpoint, workers)
        runs[workers] = (cfg.with_absolute_paths(), run_inference(cfg))
    return runs


def flips_bytes(cfg):
    return flips_bytes_from(cfg.run_dir + "/infer/flips.npz")


def test_one_two_three_workers_give_the_same_flips_and_statistics(eval_runs):
    base_cfg, base = eval_runs[1]
    assert base["num_flips"] > 0
    for workers in (2, 3):
        cfg, summary = eval_runs[workers]
        assert summary["world_size"] == workers
        assert flips_bytes(cfg) == flips_bytes(base_cfg)
        for key in ("mean", "std"):
            np.testing.assert_allclose(summary[key], base[key], rtol=1e-9, atol=0)
        assert summary["counts_after"] == base["counts_after"]


def test_every_sample_is_predicted_exactly_twice(eval_runs):
    for _, summary in eval_runs.values():
        assert summary["forwards_per_sample"] == 2.0 and summary["passes"] == 2


def test_every_worker_records_its_start_up_and_memory(eval_runs):
    for workers, (cfg, _) in eval_runs.items():
        usage = read_workers(Path(cfg.run_dir) / "infer" / WORKERS_FILE)
        assert usage["job"] == "infer" and [w["rank"] for w in usage["workers"]] == list(range(workers))
        size = len(load_train_split(cfg.data))
        shards = [stop - start for start, stop in (shard_bounds(size, r, workers) for r in range(workers))]
        assert [w["images"] for w in usage["workers"]] == [2 * rows for rows in shards]  # two passes each
        for worker in usage["workers"]:
            assert 0 < worker["entry_s"] <= worker["first_batch_s"] <= usage["startup_s"]
            assert worker["rss_entry_mib"] > 0 and 0 < worker["rss_first_batch_mib"] <= worker["peak_rss_mib"]
            assert worker["growth_mib"] == worker["peak_rss_mib"] - worker["rss_first_batch_mib"]


def test_statistics_equal_the_engine_on_the_gathered_predictions(eval_runs):
    cfg, summary = eval_runs[3]
    out = cfg.run_dir + "/infer/"
    probs, labels = np.load(out + "predictions.npy"), np.load(out + "labels.npy")
    assert probs.dtype == np.float32 and probs.shape == (329, 10)
    result = compute_flips(probs, labels, None, THRESHOLD, seed=0)
    np.testing.assert_array_equal(result.moments.mean, summary["mean"])
    np.testing.assert_array_equal(result.moments.std, summary["std"])
    table = load_flip_table(out + "flips.npz")
    np.testing.assert_array_equal(result.table.index, table.index)
    np.testing.assert_array_equal(result.table.target, table.target)


def test_flips_cli_reproduces_the_job_from_saved_predictions(eval_runs, tmp_path):
    cfg, summary = eval_runs[2]
    out = cfg.run_dir + "/infer/"
    args = ["flips", "--probs", out + "predictions.npy", "--labels", out + "labels.npy", "--indices",
            out + "indices.npy", "--threshold", str(THRESHOLD), "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    assert flips_bytes(cfg) == flips_bytes_from(tmp_path / "flips.npz")
    assert json.loads((tmp_path / "summary.json").read_text())["inputs_sha256"] == summary["inputs_sha256"]


def flips_bytes_from(path):
    table = load_flip_table(path)
    return table.index.tobytes() + table.source.tobytes() + table.target.tobytes()


@pytest.mark.parametrize("threshold", [0.0, 0.5, 1.0, 2.5])
def test_candidate_flips_equal_dense_flips(eval_runs, threshold):
    cfg, summary = eval_runs[2]
    out = cfg.run_dir + "/infer/"
    probs, labels = np.load(out + "predictions.npy"), np.load(out + "labels.npy")
    with np.load(out + "candidates.npz") as data:
        from lnr_dist.lnr import Candidates

        candidates = Candidates(float(data["t_min"]), data["index"], data["label"], data["cls"], data["z"])
        prior = data["prior"]
    assert summary["candidates"]["count"] == len(candidates) < probs.size
    dense = compute_flips(probs, labels, None, threshold, seed=0).table
    sparse = flips_from_candidates(candidates, prior, threshold, seed=0)
    np.testing.assert_array_equal(sparse.index, dense.index)
    np.testing.assert_array_equal(sparse.target, dense.target)


def test_train_time_augmentation_is_independent_of_workers_with_the_torch_loader(
    mini_root, tmp_path, stage1_checkpoint
):
    tables = []
    for workers in (1, 3):
        cfg = infer_config(mini_root, tmp_path / f"w{workers}", stage1_checkpoint, workers, augment="train")
        summary = run_inference(cfg)
        assert summary["augmentation_independent_of_workers"] is True
        tables.append(flips_bytes(cfg.with_absolute_paths()))
    assert tables[0] == tables[1]


def test_a_killed_worker_is_retried_and_gives_the_same_flips(
    mini_root, tmp_path, stage1_checkpoint, eval_runs
):
    cfg = infer_config(mini_root, tmp_path, stage1_checkpoint, 2, fault={"raise_at_epoch": 1, "rank": 1})
    run_inference(cfg)
    assert (tmp_path / "infer" / ".fault_injected").exists()
    assert flips_bytes(cfg.with_absolute_paths()) == flips_bytes(eval_runs[2][0])


def test_failure_leaves_no_partial_outputs(mini_root, tmp_path, stage1_checkpoint):
    cfg = infer_config(mini_root, tmp_path, stage1_checkpoint, 2, max_failures=0, fault={"raise_at_epoch": 1})
    with pytest.raises(Exception, match="injected fault"):
        run_inference(cfg)
    left = sorted(p.name for p in (tmp_path / "infer").iterdir())
    assert "flips.npz" not in left and "summary.json" not in left and "predictions.npy" not in left
    assert not any(name.endswith(".tmp") or name.endswith(".partial") for name in left)


def test_missing_or_incompatible_checkpoint_fails_before_workers(mini_root, tmp_path, stage1_checkpoint):
    with pytest.raises(UserError, match="stage-1 checkpoint not found"):
        run_inference(infer_config(mini_root, tmp_path, tmp_path / "nope.pt", 2))
    state = torch.load(stage1_checkpoint, weights_only=True)
    state["model"]["classifier.weight"] = state["model"]["classifier.weight"][:7]
    torch.save(state, tmp_path / "seven.pt")
    with pytest.raises(UserError, match="checkpoint has 7 classes but data.num_classes is 10"):
        run_inference(infer_config(mini_root, tmp_path, tmp_path / "seven.pt", 2))
    assert not (tmp_path / "infer").exists()


class _Batches:
    def __init__(self, batches):
        self.batches = batches

    def set_epoch(self, epoch):
        pass

    def __iter__(self):
        return iter(self.batches)


def test_a_sample_seen_the_wrong_number_of_times_is_an_error():
    from lnr_dist.data.loader import Batch
    from lnr_dist.models.network import ModelConfig, build_model

    model = build_model(ModelConfig(), 3)
    batch = Batch(torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.int64), torch.tensor([0, 1]))
    probs, forwards, _ = predict_shard(model, _Batches([batch, batch]), 0, 2, 1, torch.device("cpu"), False)
    assert probs.shape == (2, 3) and forwards == 2  # the repeated batch is padding: dropped by index
    with pytest.raises(RuntimeError, match="not seen exactly 1 times, e.g. index 2"):
        predict_shard(model, _Batches([batch]), 0, 3, 1, torch.device("cpu"), False)


def test_a_class_sorted_split_is_checked_on_global_counts_not_per_shard(
    mini_root, tmp_path, stage1_checkpoint
):
    # Issue 14 case 3: a shard of a class-sorted split misses classes; only the all-reduced counts may not.
    lines = sorted(
        (mini_root / "Mini_LT_train.txt").read_text().splitlines(), key=lambda s: int(s.split()[1])
    )
    (tmp_path / "sorted.txt").write_text("\n".join(lines) + "\n")
    labels = np.array([int(line.split()[1]) for line in lines])
    halves = np.array_split(labels, 2)
    assert all(len(set(half)) < 10 for half in halves)  # each worker's shard lacks classes
    cfg = infer_config(
        mini_root, tmp_path / "run", stage1_checkpoint, 2, data={"train_split": str(tmp_path / "sorted.txt")}
    )
    summary = run_inference(cfg)
    assert summary["counts"] == np.bincount(labels, minlength=10).tolist()
    out = tmp_path / "run" / "infer"
    result = compute_flips(
        np.load(out / "predictions.npy"), np.load(out / "labels.npy"), None, THRESHOLD, seed=0
    )
    np.testing.assert_array_equal(result.moments.mean, summary["mean"])
    assert summary["num_flips"] == len(result.table)


def test_global_moments_refuse_a_class_empty_in_every_shard():
    probs = np.full((6, 4), 0.25, dtype=np.float32)
    with pytest.raises(UserError, match=r"^train.txt: class\(es\) 1, 3 have no training sample"):
        global_moments(probs, np.array([0, 0, 2, 2, 0, 2]), 4, "train.txt")
    assert global_moments(probs, np.array([0, 1, 2, 3, 0, 2]), 4, "train.txt").counts.tolist() == [2, 1, 2, 1]
