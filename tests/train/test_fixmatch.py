"""FixMatch fine-tuning without Ray: the recipe, the pool loader and one epoch of the engine on the real mini set
and its pool (pool labels never reach the weights), the confidence mask and the sampler gate by hand, the strong
view alone gets RandAugment, the last block option, and bad input (tau, a missing pool) before Ray starts."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lnr_dist.core.config import ConfigError, load_config
from lnr_dist.core.dist import RankContext
from lnr_dist.core.errors import UserError
from lnr_dist.data.loader import LoaderSpec, build_loader
from lnr_dist.data.manifest import Manifest
from lnr_dist.data.pool import load_pool
from lnr_dist.data.sampling import instance_order, keep_probabilities, repeated_permutations, sampler_order
from lnr_dist.data.transforms import ImageTransform, StrongTransform, sample_rng
from lnr_dist.experiment import ExperimentConfig, FixMatchConfig, Stage2Config
from lnr_dist.models.losses import FixMatchConsistency, gate_uniforms
from lnr_dist.models.network import ModelConfig, build_model
from lnr_dist.reproduce.methods import steps_of
from lnr_dist.stage2.registry import get_method
from lnr_dist.train.engine import build_lr_scheduler, build_optimizer, train_one_epoch
from lnr_dist.train.recipes import build_recipe
from lnr_dist.train.trainer import load_splits, preflight, unlabeled_stream

from ..conftest import mini_data_config

MINI = Path(__file__).resolve().parents[2] / "configs" / "mini.yaml"


def mini(*overrides: str) -> ExperimentConfig:
    return load_config(ExperimentConfig, MINI, list(overrides))


# --- the gate and the mask, by hand ---------------------------------------------------------------------------


def test_keep_probabilities_are_the_samplers_per_sample_rates():
    counts = np.array([100, 10, 1, 0])
    np.testing.assert_allclose(keep_probabilities(counts, "random"), [1, 1, 1, 0])
    np.testing.assert_allclose(keep_probabilities(counts, "mean"), [0.01, 0.1, 1, 0])
    np.testing.assert_allclose(keep_probabilities(counts, "reverse"), [1e-4, 1e-2, 1, 0])


def test_the_confidence_mask_and_the_gate_by_hand():
    logits = torch.tensor(
        [[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 4.0], [1.0, 0.9, 0.0], [0.0, 0.0, 9.0], [9.0, 0.0, 0.0]]
    )  # max softmax: 0.9647 x 3, 0.4725, 0.9998, 0.9998
    strong = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    indices = torch.tensor([3, 8, 5, 1, 40, 12])
    keep = np.array([1.0, 0.0, 0.5])
    out = FixMatchConsistency(0.95, keep, seed=11)(logits, strong, indices, epoch=2)
    q = F.softmax(logits, 1)
    assert out.pseudo.tolist() == [0, 1, 2, 0, 2, 0]
    assert out.confident.tolist() == [True, True, True, False, True, True]
    u = gate_uniforms(11, 2, indices.numpy())
    confident = (q.max(1).values >= 0.95).numpy()
    expected = confident & (u < keep[[0, 1, 2, 0, 2, 0]])
    assert out.kept.tolist() == expected.tolist()
    assert not out.kept[1] and out.kept[0] and out.kept[5]  # class 1 never kept, class 0 always
    ce = -F.log_softmax(strong, 1)[torch.arange(6), out.pseudo]
    torch.testing.assert_close(out.loss, (ce * torch.from_numpy(expected)).sum() / 6)
    out.loss.backward()
    assert strong.grad[~out.kept].abs().sum() == 0 and strong.grad[out.kept].abs().sum() > 0


def test_the_gate_is_keyed_by_seed_epoch_and_index_and_keeps_at_its_rate():
    indices = np.arange(20000)
    u = gate_uniforms(3, 1, indices)
    np.testing.assert_array_equal(gate_uniforms(3, 1, indices[::-1]), u[::-1])  # order-free
    assert not np.array_equal(gate_uniforms(3, 2, indices), u)
    assert not np.array_equal(gate_uniforms(4, 1, indices), u)
    logits = torch.zeros(indices.size, 2)
    logits[:, 1] = 10.0  # every sample confident, pseudo-label 1
    out = FixMatchConsistency(0.5, np.array([1.0, 0.3]), 3)(logits, logits, torch.from_numpy(indices), 1)
    assert abs(out.kept.float().mean().item() - 0.3) < 0.01


def test_tau_outside_the_open_interval_is_a_one_line_config_error():
    for tau in ("0", "1", "1.5", "-0.1"):
        with pytest.raises(ConfigError, match=r"stage2.fixmatch: tau must lie in \(0, 1\)") as error:
            mini(f"stage2.fixmatch.tau={tau}")
        assert "\n" not in str(error.value) and "stage2.fixmatch.tau" in str(error.value)
    assert mini("stage2.fixmatch.tau=0.5").stage2.fixmatch.tau == 0.5
    assert FixMatchConfig() == FixMatchConfig(mu=7, lambda_u=1.0, tau=0.95)  # FixMatch's defaults
    with pytest.raises(ConfigError, match="need mu >= 1"):
        mini("stage2.fixmatch.mu=0")
    with pytest.raises(ConfigError, match=r"m in \[0, 30\]"):
        mini("stage2.fixmatch.randaugment.m=31")


# --- the pool order and the strong view ------------------------------------------------------------------------


def test_repeated_permutations_read_every_index_once_per_pass():
    order = repeated_permutations(10, 25, seed=1, epoch=3)
    np.testing.assert_array_equal(order[:10], instance_order(10, True, 1, 3))
    assert sorted(order[10:20].tolist()) == list(range(10)) and len(set(order[20:].tolist())) == 5
    labels = np.zeros(10, dtype=np.int64)
    np.testing.assert_array_equal(sampler_order(labels, "random", 1, 3), instance_order(10, True, 1, 3))
    np.testing.assert_array_equal(sampler_order(labels - 1, "random", 1, 3, 25), order)  # -1 labels: fine


def test_randaugment_is_applied_to_the_strong_view_only(mini_root, monkeypatch):
    cfg = mini_data_config(mini_root, pool=True, train_crop="padded")
    pool = load_pool(cfg).split
    spec = LoaderSpec.unlabeled(16, 0, 48, (2, 10))
    plain = list(build_loader(cfg, pool, replace(spec, rand_augment=None), RankContext()))
    calls = []

    def white(self, image):  # the spy: a RandAugment that turns the image white
        calls.append(image.size)
        return Image.new("RGB", image.size, (255, 255, 255))

    monkeypatch.setattr("lnr_dist.data.transforms.RandAugment.forward", white)
    batches = list(build_loader(cfg, pool, spec, RankContext()))
    assert len(calls) == 48 and all(size == (32, 32) for size in calls)
    for weak_only, both in zip(plain, batches, strict=True):
        assert both.strong is not None and weak_only.strong is None
        torch.testing.assert_close(both.images, weak_only.images, rtol=0, atol=0)  # the weak view untouched
        assert torch.all(both.strong == 1.0)  # white after normalisation by mean 0.5, std 0.5
        assert torch.all(both.labels == -1)


def test_the_strong_view_is_the_train_augmentation_then_randaugment_keyed_by_sample(mini_root):
    cfg = mini_data_config(mini_root, pool=True)
    image = Image.open(mini_root / load_pool(cfg).split.paths[0]).convert("RGB")
    weak = ImageTransform(cfg, train=True)
    strong = StrongTransform(weak, 2, 10)
    a, b = strong(image, sample_rng(0, 5, 1, 8)), strong(image, sample_rng(0, 5, 1, 8))
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # the same (seed, index, epoch) gives the same view
    assert not torch.equal(a, strong(image, sample_rng(0, 5, 2, 8)))
    with pytest.raises(ValueError, match="builds on the train augmentation"):
        StrongTransform(ImageTransform(cfg, train=False), 2, 10)


@pytest.mark.dali
def test_dali_gives_a_weak_and_a_strong_view_of_the_pool(mini_root):
    cfg = mini_data_config(mini_root, pool=True, loader="dali", train_crop="padded")
    pool = load_pool(cfg).split
    loader = build_loader(cfg, pool, LoaderSpec.unlabeled(20, 0, 100, (2, 10)), RankContext(1, 2))
    batches = list(loader)
    assert len(batches) == len(loader) == 3  # 100 draws over 2 ranks in batches of 20
    for batch in batches:
        assert batch.images.shape == batch.strong.shape == (20, 3, 32, 32)
        assert torch.all(batch.labels == -1)
    assert not torch.equal(batches[0].images, batches[0].strong)


# --- one epoch of the engine on the mini set and its pool -------------------------------------------------------


@pytest.fixture
def fixmatch_run(mini_root, tmp_path):
    """An ExperimentConfig for FixMatch on the mini set with a copy of its pool file (the test scrambles it),
    and a stage-1 checkpoint whose classifier is scaled up so that many pseudo-labels pass tau."""
    pool = tmp_path / "pool.txt"
    shutil.copy(mini_root / "Mini_LT_pool.txt", pool)
    cfg = mini(f"run_dir={tmp_path / 'run'}", "stage2.method=fixmatch", "stage2.fixmatch.mu=1", "stage2.batch_size=64",
               "stage2.fixmatch.tau=0.5", "stage2.fixmatch.semi_sampler=mean")  # fmt: skip
    data = mini_data_config(mini_root, train_crop="padded", unlabeled_split=str(pool))
    cfg = replace(cfg, data=data)
    torch.manual_seed(0)
    model = build_model(cfg.model, 10)
    with torch.no_grad():
        model.classifier.weight.mul_(200.0)
    path = cfg.layout.backbone_checkpoint()
    path.parent.mkdir(parents=True)
    torch.save({"model": model.state_dict()}, path)
    return cfg, pool


def one_epoch(cfg: ExperimentConfig) -> tuple[dict[str, torch.Tensor], dict]:
    """One epoch of stage 2 as a worker runs it (one rank, no Ray): every parameter and buffer after it."""
    splits = load_splits(cfg)
    labels = splits["train"].labels
    torch.manual_seed(cfg.seed)
    recipe = build_recipe(cfg, "stage2", Manifest.from_labels(labels, 10), labels)
    ctx, device, per_worker = RankContext(), torch.device("cpu"), cfg.stage2.batch_size
    train_loader = build_loader(
        cfg.data, splits["train"], LoaderSpec.train(per_worker, cfg.seed, recipe.sampler), ctx
    )
    unlabeled = unlabeled_stream(cfg, recipe, len(train_loader), per_worker, ctx, device)
    optimizer = build_optimizer(recipe.param_groups, recipe.train)
    scheduler = build_lr_scheduler(optimizer, recipe.train, len(train_loader))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    stats = train_one_epoch(
        recipe.model, train_loader, optimizer, scheduler, scaler, recipe.loss, device, 0,
        label_map=recipe.label_map, rng=np.random.default_rng(0), unlabeled=unlabeled,
    )  # fmt: skip
    trained = {name for group in recipe.param_groups for p in group["params"] for name, q in
               recipe.model.named_parameters() if q is p}  # fmt: skip
    return {k: v.clone() for k, v in recipe.model.state_dict().items()}, {**stats, "trained": trained}


def test_pool_labels_never_reach_fixmatch(fixmatch_run):
    """Scrambling the pool file's labels changes no weight FixMatch trains (nor any other)."""
    cfg, pool = fixmatch_run
    before, stats = one_epoch(cfg)
    assert 0 < stats["pool_kept"] < stats["pool_confident"]  # the consistency term and the gate both act
    assert stats["trained"] == {"classifier.weight", "classifier.bias", "scaling.scales"}
    lines = pool.read_text().splitlines()
    labels = [int(line.rsplit(" ", 1)[1]) for line in lines]
    scrambled = [(label + 1 + i % 9) % 10 for i, label in enumerate(labels)]
    assert all(a != b for a, b in zip(labels, scrambled, strict=True))
    pool.write_text(
        "".join(f"{line.rsplit(' ', 1)[0]} {label}\n" for line, label in zip(lines, scrambled, strict=True))
    )
    after, stats_after = one_epoch(cfg)
    assert before.keys() == after.keys()
    for name in before:
        assert torch.equal(before[name], after[name]), name
    timing = ("train_seconds",)
    assert {k: v for k, v in stats_after.items() if k not in timing} == {
        k: v for k, v in stats.items() if k not in timing
    }
    # the comparison can see the pool: without its term, the trained weights differ
    unweighted, _ = one_epoch(replace(cfg, stage2=replace(cfg.stage2, fixmatch=replace(cfg.stage2.fixmatch,
                                                                                        lambda_u=0.0))))  # fmt: skip
    assert not torch.equal(unweighted["classifier.weight"], before["classifier.weight"])


def test_train_last_block_trains_that_block_only_with_its_bn_in_train_mode(fixmatch_run):
    cfg, _ = fixmatch_run
    cfg = replace(
        cfg, stage2=replace(cfg.stage2, fixmatch=replace(cfg.stage2.fixmatch, train_last_block=True))
    )
    labels = load_splits(cfg)["train"].labels
    recipe = build_recipe(cfg, "stage2", Manifest.from_labels(labels, 10), labels)
    model = recipe.model.train()
    block = model.features.last_block()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"classifier.weight", "classifier.bias", "scaling.scales"} | {
        f"features.body.{n}" for n, _ in model.features.body.named_parameters() if int(n.split(".")[0]) >= 8
    }
    assert all(m.training for m in block.modules()) and not model.features.body[1].training
    assert set(model.state_dict()) == set(build_model(ModelConfig(), 10).state_dict()) | {"scaling.scales"}
    before, _ = one_epoch(replace(cfg, stage2=replace(cfg.stage2, fixmatch=FixMatchConfig(mu=1, tau=0.5))))
    after, stats = one_epoch(cfg)
    assert "features.body.8.weight" in stats["trained"]
    assert not torch.equal(before["features.body.8.weight"], after["features.body.8.weight"])
    assert torch.equal(before["features.body.4.weight"], after["features.body.4.weight"])  # frozen


# --- the registry and bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, labels, steps",
    [("fixmatch", "original", ["stage1"]), ("fixmatch_lnr", "lnr", ["stage1", "infer", "tune"])],
)
def test_the_fixmatch_methods_are_mislas_and_lnr_plus_the_pool(name, labels, steps):
    method, paired = get_method(name), get_method("mislas" if labels == "original" else "lnr")
    assert method.unlabeled is not None and method.backends == ("images",)
    assert (method.labels, method.threshold, method.loss, method.sampler, method.lws, method.stage1) == (
        paired.labels, paired.threshold, paired.loss, paired.sampler, paired.lws, paired.stage1
    )  # fmt: skip
    assert [
        s.name for s in steps_of(method, mini("stage2.backend=features"))
    ] == steps  # images whatever asked


def test_fixmatch_refuses_a_bn_shift(mini_root):
    with pytest.raises(UserError, match=r"^stage2.shift_bn: method fixmatch keeps the frozen backbone's"):
        get_method("fixmatch").unlabeled(Stage2Config(method="fixmatch", shift_bn=True), None, 0)


def test_a_missing_pool_is_one_line_naming_the_key_before_ray_starts(mini_root, tmp_path):
    import ray

    from lnr_dist.train.trainer import fit

    started = ray.is_initialized()  # the test session's cluster may run already: this call must not start one
    cfg = replace(mini(f"run_dir={tmp_path}", "stage2.method=fixmatch"), data=mini_data_config(mini_root))
    with pytest.raises(UserError, match=r"^no unlabelled pool: set data.unlabeled_split") as error:
        fit(cfg, "stage2")
    assert "\n" not in str(error.value) and ray.is_initialized() == started
    missing = replace(cfg, data=replace(cfg.data, unlabeled_split=str(tmp_path / "nope.txt")))
    with pytest.raises(UserError, match=r"nope.txt: pool file not found \(data.unlabeled_split\)"):
        preflight(missing, "stage2")
    assert ray.is_initialized() == started


def test_reproduce_refuses_a_pool_method_without_a_pool_before_any_job(mini_root, tmp_path):
    from lnr_dist.reproduce.runner import reproduce

    cfg = replace(
        mini(f"run_dir={tmp_path}", "reproduce.methods=[mislas, fixmatch]"), data=mini_data_config(mini_root)
    )
    ran = []
    with pytest.raises(
        UserError, match=r"^method fixmatch needs an unlabelled pool: set data.unlabeled_split"
    ):
        reproduce(cfg, lambda job, c, out: ran.append(job))
    assert ran == [] and not (tmp_path / "reproduce_config.yaml").exists()


def test_metrics_of_a_run_without_a_pool_read_back_for_a_resume(tmp_path):
    from lnr_dist.core import storage
    from lnr_dist.train.trainer import CSV_FIELDS, _read_rows

    rows = [{"epoch": 0, "lr": 0.1, "train_loss": 1.5, "train_images": 320, "val_ece": float("nan")}]
    storage.write_csv(tmp_path / "metrics.csv", rows, CSV_FIELDS)  # empty pool (and NaN) cells
    assert _read_rows(tmp_path / "metrics.csv") == [
        {"epoch": 0, "lr": 0.1, "train_loss": 1.5, "train_images": 320}
    ]


def test_no_module_outside_the_registry_switches_on_the_fixmatch_names(monkeypatch):
    from tests.stage2 import test_registry

    monkeypatch.setattr(test_registry, "BUILT_IN", ("fixmatch", "fixmatch_lnr"))
    test_registry.test_no_module_outside_the_registry_switches_on_a_method_name()
