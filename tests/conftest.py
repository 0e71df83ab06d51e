"""Shared fixtures; tests mirror the layout of lnr_dist/."""

from __future__ import annotations

import numpy as np
import pytest

from lnr_dist.core.synthetic import exponential_counts, long_tailed_predictions


@pytest.fixture(scope="session", autouse=True)
def checked_images_in_a_temp_folder(tmp_path_factory):
    """The DALI precheck's records (data/checked.py) of this process under the session's temp folder, not the
    home folder (Ray workers, other processes, keep theirs in the home folder's cache)."""
    from lnr_dist.data import checked

    checked.CHECKED_DIR = tmp_path_factory.mktemp("checked_images")
    yield
    checked.CHECKED_DIR = None


@pytest.fixture(scope="session")
def long_tailed_set() -> tuple[np.ndarray, np.ndarray]:
    """(N, C) float32 softmax and labels for 12 classes, 200 down to 3 samples, shuffled."""
    probs, labels = long_tailed_predictions(exponential_counts(12, 200, 3), seed=1)
    order = np.random.default_rng(7).permutation(labels.shape[0])
    return probs[order], labels[order]


def tensorboard_scalars(path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} as TensorBoard shows the event files under `path` (a folder, or one event
    file): read with TensorBoard's own reader, which drops the steps a restarted writer purged."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    reader = EventAccumulator(str(path), size_guidance={"scalars": 0})  # 0: keep every point
    reader.Reload()
    return {tag: [(e.step, e.value) for e in reader.Scalars(tag)] for tag in reader.Tags()["scalars"]}


@pytest.fixture(scope="session")
def mini_root(tmp_path_factory):
    """The real bundled mini set (scikit-learn digits, 10 classes, IF 0.01), built once per test session, with the
    unlabelled pool `make demo` builds (Mini_LT_pool.txt, demo.POOL_RATIO x the training count, balanced)."""
    from lnr_dist.data.mini import make_mini
    from lnr_dist.demo import POOL_RATIO

    root = tmp_path_factory.mktemp("mini")
    make_mini(root, imb_factor=0.01, seed=0, unlabeled_ratio=POOL_RATIO)
    return root


def mini_data_config(root, pool: bool = False, **changes):
    """The mini set's `data` section; with `pool`, data.unlabeled_split names its pool."""
    from lnr_dist.data.config import DataConfig

    values = dict(
        root=str(root),
        train_split=str(root / "Mini_LT_train.txt"),
        val_split=str(root / "Mini_LT_val.txt"),
        test_split=str(root / "Mini_LT_test.txt"),
        num_classes=10,
        image_size=32,
        resize_size=32,
        num_threads=0,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        unlabeled_split=str(root / "Mini_LT_pool.txt") if pool else None,
    )
    values.update(changes)
    return DataConfig(**values)


def mini_experiment(root, run_dir, **sections):
    """An ExperimentConfig on the mini set with short CPU schedules; `sections` replace whole sections or keys
    given as dicts (e.g. stage1={"epochs": 3})."""
    from dataclasses import replace

    from lnr_dist.experiment import ExperimentConfig, RayConfig, TrainConfig

    base = ExperimentConfig(
        data=mini_data_config(root, train_crop="padded"),
        run_dir=str(run_dir),
        stage1=TrainConfig(
            epochs=6, batch_size=32, eval_batch_size=128, lr=0.1, warmup_epochs=1, mixup_alpha=0.2
        ),
        ray=RayConfig(num_workers=2, cpus_per_worker=1, max_failures=1),
    )
    changes = {}
    for name, value in sections.items():
        current = getattr(base, name)
        changes[name] = replace(current, **value) if isinstance(value, dict) else value
    return replace(base, **changes)


@pytest.fixture(scope="session")
def ray_session():
    """One real local Ray cluster for the whole test session (started by the code under test, stopped here)."""
    import ray

    from lnr_dist.experiment import RayConfig
    from lnr_dist.runtime.raycluster import ensure_ray

    ensure_ray(RayConfig())
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def stage1_checkpoint(mini_root, tmp_path_factory, ray_session):
    """A tiny stage-1 model trained in the tests (real Ray, 2 workers, 3 epochs): its best checkpoint."""
    from lnr_dist.train.trainer import fit

    cfg = mini_experiment(
        mini_root, tmp_path_factory.mktemp("stage1"), stage1={"epochs": 3}
    ).with_absolute_paths()
    fit(cfg, "stage1")
    return cfg.layout.stage("stage1") / "checkpoints" / "best.pt"
