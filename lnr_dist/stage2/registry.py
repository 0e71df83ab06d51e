"""The one home of stage-2 methods: `STAGE2_METHODS = {name: Stage2Method}`. Every other module looks a method
up here (`method_of(cfg)`); none switches on a method's name.

A method declares what it trains on and how:

- `labels`: its label policy (flip_sources.py): the original labels, LNR's flips, random flips matched to LNR's
  count, or a method-specific `LabelPolicy`;
- `threshold`: none (no threshold), fixed (the run's stage2.threshold as configured) or tuned (`reproduce` runs
  it at the sweep's choice, and `lnr-dist tune` can sweep it);
- `backends`: images (the stage-2 job on Ray Train) and/or features (a head on cached stage-1 features);
- `loss` (a factory: (Stage2Config, Manifest) -> module(logits (B, C) float, targets (B,) int64) -> scalar),
  `sampler` (random, mean or reverse of data/sampling.py, or config: stage2.sampler), `lws` (the head:
  classifier + learnable weight scaling), `resample` (cached features only: e.g. SMOTE), `extra_train`
  (cached features only: annotated samples added to the labelled training set, e.g. mined pool images);
- `predict` (cached features only): the method's scores without the head `train_head` trains, e.g. the votes of
  nearest neighbours (knn, ann, wann, wann_lnr) or a fresh linear probe (stage2/neighbours.py);
- `needs_pool`: it reads the unlabelled pool (data.unlabeled_split); `check`: its own input checks, run before
  any work; `sections`: config sections its result depends on besides stage2 and its shared steps' (for
  `reproduce`'s resumable steps);
- `stage1`: the backbone it starts from (a `Backbone`: the stage-1 recipe and its run folder), and `retrain`:
  False for a method whose result is that stage-1 model itself (ce, mixup);
- `unlabeled`: a factory of its unlabelled part (`Unlabeled`: a consistency loss on the pool of
  data.unlabeled_split, its batch ratio, weight and strong augmentation; images backend only), e.g. `fixmatch`.
  The trainer reads the pool through data/pool.py's label-free view: no pool label reaches training.

A user's method is a module named in `stage2.plugins` that calls `register(Stage2Method(...))` when imported;
`method_of` imports the plugins first, so the driver, every Ray worker and every SLURM task sees the same
registry. The module must be importable there (installed, or its folder on PYTHONPATH).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
from torch import nn

from ..core.errors import UserError
from ..data.manifest import Manifest
from ..data.sampling import SAMPLER_POWERS, Sampler, keep_probabilities
from ..experiment import ExperimentConfig, Stage2Config, ThresholdPolicy, TrainConfig
from ..lnr import FlipTable
from ..models.losses import (
    BiasCompensation,
    CrossEntropy,
    FixMatchConsistency,
    LabelAwareSmoothing,
    smoothing_per_class,
)
from .flip_sources import LNR_FLIPS, ORIGINAL_LABELS, RANDOM_FLIPS, LabelContext, LabelPolicy, tuned_threshold
from .mining import check_budget, mined_from_pool, random_from_pool
from .neighbours import FitHead, ann, check_adaptive, check_knn, check_probe, knn, linear_probe, wann
from .oversample import adasyn, smote

Backend = Literal["images", "features"]
BACKENDS: tuple[Backend, ...] = ("images", "features")
LossFactory = Callable[[Stage2Config, Manifest], nn.Module]
Resample = Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]
# (cfg, features by split: train, val, test (+ pool when data.unlabeled_split is set), (N, D) float32; labels by
# split: train, val, test, (N,) int64) -> samples added to the training set: features (K, D) float32, labels (K,)
# int64 in [0, C), and what the method's results.json records of them (JSON-able)
ExtraTrain = Callable[
    [ExperimentConfig, Mapping[str, np.ndarray], Mapping[str, np.ndarray]],
    tuple[np.ndarray, np.ndarray, dict[str, Any]],
]
# (cfg, features by split: train, val, test (+ pool), (N, D) float32; labels by split, (N,) int64, train's the
# method's own (its label policy's flips applied); fit_head) -> (val logits (N_val, C) float32, test logits
# (N_test, C) float32, fields results.json records beside the metrics (JSON-able)): a method scored without
# train_head's head. Logits: what the metrics, temperature scaling and test_logits.npz read (softmax per row).
Predict = Callable[
    [ExperimentConfig, Mapping[str, np.ndarray], Mapping[str, np.ndarray], FitHead],
    tuple[np.ndarray, np.ndarray, dict[str, Any]],
]
POOL_KEY = "data.unlabeled_split"


def label_aware_smoothing(s2: Stage2Config, manifest: Manifest) -> nn.Module:
    """MiSLAS's label-aware smoothing (Zhong et al., CVPR 2021, eq. 4): smoothing from smooth_tail (rarest
    class) to smooth_head (largest) along smooth_profile."""
    return LabelAwareSmoothing(
        smoothing_per_class(manifest.class_counts, s2.smooth_head, s2.smooth_tail, s2.smooth_profile)
    )


def cross_entropy(s2: Stage2Config, manifest: Manifest) -> nn.Module:
    """Plain cross-entropy (the linear probe's loss)."""
    return CrossEntropy()


def bias_compensation(train: TrainConfig, manifest: Manifest) -> nn.Module:
    """The bias-compensation loss (models/losses.py BiasCompensation: logit adjustment by the training prior
    of manifest.class_counts toward a uniform target, blended into plain cross-entropy as the epochs pass):
    stage 1's `loss: bias_compensation`, and a loss factory a stage-2 method can name. In stage 2 pair it with
    `sampler="random"` (instance sampling): under class-balanced sampling the classes the head sees are already
    uniform and the adjustment would compensate twice. Its prior is the training split's, also on flipped
    labels."""
    return BiasCompensation(manifest.class_counts)


@dataclass(frozen=True)
class Unlabeled:
    """A method's unlabelled part, built per run: per labelled batch of B images, `ratio` x B pool images in a
    weak and a strong view (`rand_augment` = (n, m) of RandAugment on top of the train augmentation), and
    `weight` x consistency(weak logits (U, C), strong logits (U, C), pool indices (U,), epoch) ->
    models.losses.ConsistencyTerms added to the labelled loss. `train_last_block`: the backbone's last block
    trains too (else the classifier and LWS only)."""

    consistency: nn.Module
    ratio: int
    weight: float
    rand_augment: tuple[int, int]
    train_last_block: bool = False


UnlabeledFactory = Callable[[Stage2Config, Manifest, int], Unlabeled]


def fixmatch(s2: Stage2Config, manifest: Manifest, seed: int) -> Unlabeled:
    """FixMatch fine-tuning from stage2.fixmatch (experiment.FixMatchConfig): consistency on confident
    pseudo-labels (tau), gated by stage2.fixmatch.semi_sampler's per-sample rates on the labelled training
    counts (manifest.class_counts; data/sampling.py keep_probabilities), seeded by `seed`. The frozen backbone
    keeps its BN in eval mode, so stage2.shift_bn is refused (UserError naming the key)."""
    fm = s2.fixmatch
    if s2.shift_bn:
        raise UserError(
            f"stage2.shift_bn: method {s2.method} keeps the frozen backbone's BatchNorm in eval mode (FixMatch "
            "fine-tuning); set stage2.shift_bn=false"
        )
    keep = keep_probabilities(manifest.class_counts, fm.semi_sampler)
    return Unlabeled(
        FixMatchConsistency(fm.tau, keep, seed), fm.mu, fm.lambda_u, (fm.randaugment.n, fm.randaugment.m),
        fm.train_last_block,
    )  # fmt: skip


@dataclass(frozen=True)
class Backbone:
    """A stage-1 recipe a method can start from: `stage1` maps the config's stage1 section to this backbone's,
    and its run folder is `folder` inside the seed's (empty: the seed folder itself)."""

    name: str
    folder: str
    stage1: Callable[[TrainConfig], TrainConfig]
    description: str


def _plain(train: TrainConfig) -> TrainConfig:
    """stage 1 with plain cross-entropy: no mixup, no bias compensation, no range loss (the named backbones
    start from it, so each is what its name says whatever stage1 configures; `mixup` is stage 1 as configured).
    Mixup is off in the loss backbones too: the recipe of seed 002 names none, and the range loss wants one
    class per sample, which a mixed image does not have."""
    return replace(train, mixup_alpha=0.0, loss="ce", range_loss=replace(train.range_loss, enabled=False))


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone("mixup", "", lambda t: t, "stage 1 as configured (mixup: LNR's backbone)"),
        Backbone("ce", "ce", _plain, "stage 1 with plain cross-entropy"),
        Backbone(
            "bias_compensation", "bias_compensation", lambda t: replace(_plain(t), loss="bias_compensation"),
            "stage 1 with the bias-compensation loss (logit adjustment blended into CE), no mixup",
        ),
        Backbone(
            "range_loss", "range_loss",
            lambda t: replace(_plain(t), range_loss=replace(t.range_loss, enabled=True)),
            "stage 1 with cross-entropy + range loss on the features (stage1.range_loss settings), no mixup",
        ),
    )
}  # fmt: skip


def backbone_config(cfg: ExperimentConfig, name: str) -> ExperimentConfig:
    """The config whose run folder holds backbone `name`'s pipeline (stage 1, inference, sweep, features)."""
    backbone = BACKBONES[name]
    return replace(
        cfg, run_dir=str(cfg.layout.backbone(backbone.folder).root), stage1=backbone.stage1(cfg.stage1)
    )


@dataclass(frozen=True)
class Stage2Method:
    """One entry of the registry (see the module docstring)."""

    name: str
    description: str
    labels: LabelPolicy = ORIGINAL_LABELS
    threshold: Literal["none", "fixed", "tuned"] = "none"
    backends: tuple[Backend, ...] = BACKENDS
    loss: LossFactory = label_aware_smoothing
    sampler: Literal["config", "random", "mean", "reverse"] = "config"  # config: stage2.sampler
    lws: bool | None = None  # None: stage2.lws
    resample: Resample | None = None
    extra_train: ExtraTrain | None = None
    needs_pool: bool = False
    check: Callable[[ExperimentConfig], None] | None = None
    sections: tuple[str, ...] = ()
    stage1: str = "mixup"
    retrain: bool = True
    unlabeled: UnlabeledFactory | None = None
    predict: Predict | None = None

    def __post_init__(self) -> None:
        if self.stage1 not in BACKBONES:
            raise ValueError(
                f"method {self.name}: unknown stage1 backbone {self.stage1!r}; valid: {', '.join(BACKBONES)}"
            )
        if self.retrain and (not self.backends or not set(self.backends) <= set(BACKENDS)):
            raise ValueError(f"method {self.name}: backends must be a non-empty subset of {BACKENDS}")
        if self.sampler != "config" and self.sampler not in SAMPLER_POWERS:
            raise ValueError(
                f"method {self.name}: unknown sampler {self.sampler!r}; valid: config, {', '.join(SAMPLER_POWERS)}"
            )
        for hook in ("resample", "extra_train", "predict"):
            if getattr(self, hook) is not None and self.backends != ("features",):
                raise ValueError(
                    f"method {self.name}: {hook} works on cached features: backends must be ('features',)"
                )
        if self.predict is not None and (self.resample is not None or self.extra_train is not None):
            raise ValueError(f"method {self.name}: predict scores the labelled split as it is; it takes no "
                             "resample or extra_train step")  # fmt: skip
        if self.unlabeled is not None and (self.backends != ("images",) or not self.needs_pool):
            raise ValueError(
                f"method {self.name}: an unlabelled part augments images of the pool: backends must be "
                "('images',) and needs_pool True"
            )

    def check_inputs(self, cfg: ExperimentConfig) -> None:
        """This method's own inputs, checked before any work: the pool when it needs one, then its `check`.
        Raises UserError (one line naming the key)."""
        if self.needs_pool and cfg.data.unlabeled_split is None:
            raise UserError(
                f"method {self.name} needs an unlabelled pool: set {POOL_KEY} to a '<path> <label>' file of "
                "images in no other split (`lnr-dist data make-mini --unlabeled-ratio 2` writes one)"
            )
        if self.check is not None:
            self.check(cfg)

    @property
    def sweepable(self) -> bool:
        """Whether `lnr-dist tune` can sweep this method's threshold: tuned, and a head trained per threshold (a
        method with `predict`, e.g. wann_lnr, runs at the threshold a sweepable method's sweep chose)."""
        return self.threshold == "tuned" and self.predict is None

    def sampler_of(self, s2: Stage2Config) -> Sampler:
        """The sampler this method trains with: its own, or stage2.sampler when it declares config."""
        return s2.sampler if self.sampler == "config" else self.sampler

    def uses_lws(self, s2: Stage2Config) -> bool:
        return s2.lws if self.lws is None else self.lws

    def rounds_of(self, s2: Stage2Config) -> int:
        """Rounds of iterated LNR this method runs: stage2.rounds when its label policy iterates, else 1."""
        # a method scored by its predict hook has no head to predict the next round with
        return s2.rounds if self.retrain and self.labels.iterates and self.predict is None else 1

    def backend(self, s2: Stage2Config, purpose: Literal["run", "sweep"] = "run") -> Backend:
        """Where this method trains. An explicit stage2.backend it supports wins; auto is cached features for the
        sweep's trials when no BN shift is asked for, images for a method's own run; a method with one
        backend runs on it."""
        if s2.backend != "auto" and s2.backend in self.backends:
            return s2.backend
        if len(self.backends) == 1:
            return self.backends[0]
        if purpose == "sweep":
            return "images" if s2.shift_bn else "features"
        return "images"

    def run_config(self, cfg: ExperimentConfig) -> ExperimentConfig:
        """The config `reproduce` runs this method with: stage2.method set to it, and for a tuned method the
        sweep's threshold (policy tuned); written as the method folder's config.yaml."""
        stage2 = replace(cfg.stage2, method=self.name)
        if self.threshold == "tuned":
            stage2 = replace(stage2, threshold=ThresholdPolicy("tuned"))
        return replace(backbone_config(cfg, self.stage1), stage2=stage2)


STAGE2_METHODS: dict[str, Stage2Method] = {}


def register(method: Stage2Method, replace_existing: bool = False) -> Stage2Method:
    """Add `method` to the registry (a plugin module calls this when imported). Raises ValueError when the name
    is taken, unless `replace_existing`."""
    known = STAGE2_METHODS.get(method.name)
    if known is not None and known != method and not replace_existing:
        raise ValueError(f"stage-2 method {method.name!r} is registered already")
    STAGE2_METHODS[method.name] = method
    return method


def load_plugins(modules: tuple[str, ...] | list[str]) -> None:
    """Import each module of stage2.plugins (once per process; they register their methods). Raises UserError
    naming the module when it cannot be imported."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            raise UserError(
                f"stage2.plugins: cannot import {name!r} ({exc}): it must be importable here and on every Ray "
                "worker and SLURM node (install it, or put its folder on PYTHONPATH)"
            ) from None
        except Exception as exc:
            raise UserError(
                f"stage2.plugins: importing {name!r} failed: {type(exc).__name__}: {exc}"
            ) from exc


def get_method(name: str, key: str = "stage2.method") -> Stage2Method:
    """The registered method `name`; UserError listing the valid names otherwise."""
    if name not in STAGE2_METHODS:
        raise UserError(f"{key}: unknown method {name!r}; valid: {', '.join(STAGE2_METHODS)}")
    return STAGE2_METHODS[name]


def method_of(cfg: ExperimentConfig) -> Stage2Method:
    """cfg.stage2.method, after importing cfg.stage2.plugins."""
    load_plugins(cfg.stage2.plugins)
    return get_method(cfg.stage2.method)


def reproduce_methods(cfg: ExperimentConfig) -> list[Stage2Method]:
    """The methods `reproduce` runs (reproduce.methods; empty = all registered, but those that need a pool when
    data.unlabeled_split is unset), after the plugins are imported, with reproduce.baselines checked too. Raises
    UserError naming the key and listing the valid names."""
    method_of(cfg)
    for name in cfg.reproduce.baselines:
        get_method(name, "reproduce.baselines")
    if cfg.reproduce.methods:
        return [get_method(n, "reproduce.methods") for n in cfg.reproduce.methods]
    has_pool = cfg.data.unlabeled_split is not None
    return [m for m in STAGE2_METHODS.values() if has_pool or not m.needs_pool]


def stage2_threshold(cfg: ExperimentConfig) -> float | None:
    """The threshold cfg.stage2.threshold gives (None: the inference job's own flips)."""
    policy = cfg.stage2.threshold
    if policy.policy == "tuned":
        return tuned_threshold(cfg.layout)
    return policy.value


def flips_at(
    cfg: ExperimentConfig, train_labels: np.ndarray, threshold: float | None
) -> tuple[FlipTable | None, float | None]:
    """The flip table cfg.stage2.method trains on at `threshold` (None: the inference job's own flips; ignored by
    a method without a threshold) and the threshold it was made at. train_labels: (N,) int64, row i = dataset
    index i."""
    method = method_of(cfg)
    used = None if method.threshold == "none" else threshold
    return method.labels.flips(LabelContext(cfg, train_labels, used))


def stage2_flips(cfg: ExperimentConfig, train_labels: np.ndarray) -> tuple[FlipTable | None, float | None]:
    """flips_at the threshold of the run's policy (stage2.threshold)."""
    uses_threshold = method_of(cfg).threshold != "none"
    return flips_at(cfg, train_labels, stage2_threshold(cfg) if uses_threshold else None)


for _method in (
    Stage2Method("ce", "stage 1 with plain cross-entropy", stage1="ce", retrain=False, backends=()),
    Stage2Method("mixup", "stage 1 with mixup (LNR's backbone)", retrain=False, backends=()),
    Stage2Method("mislas", "MiSLAS stage 2 (LAS, LWS, balanced), no flips"),
    Stage2Method("lnr", "stage 2 on LNR flips at the tuned threshold", LNR_FLIPS, "tuned"),
    Stage2Method("random", "stage 2 on as many random flips as LNR", RANDOM_FLIPS, "tuned"),
    # Oversampled features are balanced already: they are read once each per epoch (random).
    Stage2Method(
        "smote", "SMOTE on stage-1 features", backends=("features",), sampler="random", resample=smote
    ),
    Stage2Method(
        "adasyn", "ADASYN on stage-1 features", backends=("features",), sampler="random", resample=adasyn
    ),
    Stage2Method(
        "bias_compensation",
        "MiSLAS stage 2 on the bias-compensation backbone (stage-1 loss)",
        stage1="bias_compensation",
    ),
    Stage2Method("range_loss", "MiSLAS stage 2 on the range-loss backbone (stage 1)", stage1="range_loss"),
    # mislas and lnr plus FixMatch on the pool: what they add over those two is the unlabelled part alone
    Stage2Method(
        "fixmatch",
        "MiSLAS stage 2 + FixMatch on the unlabelled pool (stage2.fixmatch)",
        backends=("images",),
        unlabeled=fixmatch,
        needs_pool=True,
    ),
    Stage2Method(
        "fixmatch_lnr",
        "stage 2 on LNR flips at the tuned threshold + FixMatch on the unlabelled pool",
        LNR_FLIPS,
        "tuned",
        backends=("images",),
        unlabeled=fixmatch,
        needs_pool=True,
    ),
    # Minority-class mining (MMM 2022, stage2/mining.py): the MiSLAS head on cached features, its training set
    # grown by mining.budget annotated pool images; mining_random picks as many at random (the control).
    Stage2Method(
        "mining",
        "MiSLAS head + the mining.budget pool images minority-class mining picks, annotated",
        backends=("features",),
        extra_train=mined_from_pool,
        needs_pool=True,
        check=check_budget,
        sections=("mining",),
    ),
    Stage2Method(
        "mining_random",
        "MiSLAS head + mining.budget pool images picked at random, annotated",
        backends=("features",),
        extra_train=random_from_pool,
        needs_pool=True,
        check=check_budget,
        sections=("mining",),
    ),
    # Nearest neighbours on cached features (WANN, TMLR 2025; stage2/neighbours.py): no head is trained, the vote
    # shares are the scores; the linear probe is the paper's baseline on the same rows (neighbours: section).
    Stage2Method(
        "knn",
        "kNN vote of the neighbours.k nearest training samples on z-scored cached features",
        backends=("features",),
        predict=knn,
        check=check_knn,
        sections=("neighbours",),
    ),
    Stage2Method(
        "ann",
        "ANN: kNN with the reliability k* of the nearest training sample (kmin..kmax)",
        backends=("features",),
        predict=ann,
        check=check_adaptive,
        sections=("neighbours",),
    ),
    Stage2Method(
        "wann",
        "WANN: ANN with each neighbour's vote weighted by its reliability 1/k*",
        backends=("features",),
        predict=wann,
        check=check_adaptive,
        sections=("neighbours",),
    ),
    Stage2Method(
        "wann_lnr",
        "WANN with reliability and votes on LNR's flipped labels at the tuned threshold",
        LNR_FLIPS,
        "tuned",
        backends=("features",),
        predict=wann,
        check=check_adaptive,
        sections=("neighbours",),
    ),
    Stage2Method(
        "linear_probe",
        "a fresh linear layer, cross-entropy, instance sampling, no LWS, on the neighbour methods' features",
        backends=("features",),
        loss=cross_entropy,
        sampler="random",
        lws=False,
        predict=linear_probe,
        check=check_probe,
        sections=("neighbours",),
    ),
):
    register(_method)
