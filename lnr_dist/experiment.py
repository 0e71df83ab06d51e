"""The experiment config: one YAML per dataset with a section per concern; every job validates all of it, so a
typo anywhere fails before any cluster time is spent."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar, Literal

from .core.errors import UserError
from .core.layout import RunLayout
from .data.config import DataConfig
from .data.sampling import Sampler
from .lnr.rng import MAX_ROUND, ROUND_SEED_BITS
from .models.network import ModelConfig


@dataclass(frozen=True)
class RangeLossConfig:
    """`stage1.range_loss:` — range loss (Zhang et al., "Range Loss for Deep Face Recognition with Long-Tailed
    Training Data", ICCV 2017) on the penultimate features, added to stage 1's loss with weight `beta`.

    Distances are squared Euclidean, as in the paper's Eq. 3-4 and the source recipe (seed 002). Inter-class
    term: max(margin - the smallest distance between two class centres of the batch, 0); intra-class term (with
    `intra`): for each class of the batch, the harmonic mean k / sum_j 1/d_j of its `k` largest within-class
    pairwise distances, summed over classes. Defaults (margin 100, beta 0.01, k 2, intra off) are the source
    recipe's. The centres are each worker's own (its batch's class means): gradients are averaged by DDP as for
    any loss, so the term depends on the per-worker batch (batch_size / ray.num_workers), not the global batch.
    Under mixup (stage1.mixup_alpha > 0) the term follows mixup's rule like the cross-entropy: lam * R(features,
    y) + (1 - lam) * R(features, y_perm); the `range_loss` backbone turns mixup off.
    """

    enabled: bool = False
    beta: float = 0.01
    margin: float = 100.0
    k: int = 2
    intra: bool = False

    def __post_init__(self) -> None:
        if self.beta < 0 or self.margin <= 0 or self.k < 1:
            raise ValueError(
                f"need beta >= 0, margin > 0 and k >= 1; got beta {self.beta}, margin {self.margin}, k {self.k}"
            )


@dataclass(frozen=True)
class TrainConfig:
    """`stage1:` — the one trainer's recipe (stage 2 extends it).

    batch_size and eval_batch_size are GLOBAL (as papers state them); each of W workers takes batch_size / W,
    so the recipe means the same for any worker count.

    Learning-rate schedule (lnr_dist.train.engine.lr_multiplier gives the exact rule): a linear warm-up over
    `warmup_epochs`, then `schedule` cosine (to 0 at the end of `epochs`) or step (x `gamma` after each epoch
    of `milestones`). `schedule_unit` step changes the LR after every optimizer step; epoch holds it for a whole
    epoch, set at the epoch's start, as MiSLAS's and LNR's `adjust_learning_rate` do.

    `loss`: ce (cross-entropy) or bias_compensation (logit-adjusted cross-entropy blended into plain
    cross-entropy over training: lnr_dist.models.losses.BiasCompensation); `range_loss` adds the range loss on
    the features (RangeLossConfig). Both are stage-1 settings: stage 2 takes its loss from stage2.method.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    warmup_epochs: int = 0
    schedule: Literal["cosine", "step"] = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    schedule_unit: Literal["epoch", "step"] = "step"
    mixup_alpha: float = 0.0
    eval_batch_size: int = 256
    select_metric: Literal["balanced_acc", "top1"] = "balanced_acc"
    amp: bool = True
    channels_last: bool = True
    evaluate_test: bool = True
    loss: Literal["ce", "bias_compensation"] = "ce"
    range_loss: RangeLossConfig = field(default_factory=RangeLossConfig)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError("need lr > 0, weight_decay >= 0 and momentum in [0, 1)")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs), got {self.warmup_epochs}")
        if self.mixup_alpha < 0:
            raise ValueError(f"mixup_alpha must be >= 0 (0 = off), got {self.mixup_alpha}")
        self._check_schedule()

    def _check_schedule(self) -> None:
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if self.schedule == "cosine":
            if self.milestones:
                raise ValueError("milestones apply to schedule: step only (cosine has none); remove them")
            return
        if not self.milestones:
            raise ValueError(
                "schedule: step needs milestones (epochs after which the LR is multiplied by gamma)"
            )
        if any(b <= a for a, b in itertools.pairwise(self.milestones)):
            raise ValueError(f"milestones must be strictly increasing, got {list(self.milestones)}")
        if not (self.warmup_epochs < self.milestones[0] and self.milestones[-1] <= self.epochs):
            raise ValueError(
                f"milestones must lie in (warmup_epochs, epochs] = ({self.warmup_epochs}, {self.epochs}], "
                f"got {list(self.milestones)}"
            )


@dataclass(frozen=True)
class ThresholdPolicy:
    """`stage2.threshold:` — where the LNR threshold of a stage-2 run comes from (methods that flip labels at a
    threshold; a method without one ignores it).

    policy infer: the inference job's own flips (infer/flips.npz, made at infer.threshold); fixed: flips
    re-derived at `value` from the saved predictions or candidates (no new inference); tuned: the threshold
    `lnr-dist tune` chose on validation (tune/chosen_threshold.json). Nothing changes this behind the user's back:
    a sweep trial runs at an explicit fixed policy, and `reproduce` runs each method at the policy the method
    declares in the registry (lnr_dist.stage2.registry), written in the method's config.yaml.
    """

    SCALAR_HINT: ClassVar[str] = (
        "set stage2.threshold.policy=tuned (the sweep's choice), stage2.threshold.policy=infer (the inference "
        "job's flips), or stage2.threshold.policy=fixed with stage2.threshold.value=<t>"
    )

    policy: Literal["infer", "fixed", "tuned"] = "infer"
    value: float | None = None

    def __post_init__(self) -> None:
        if (self.policy == "fixed") != (self.value is not None):
            raise ValueError(
                "threshold.value goes with threshold.policy: fixed (and only with it); "
                f"got policy {self.policy!r}, value {self.value!r}"
            )

    @classmethod
    def fixed(cls, value: float) -> ThresholdPolicy:
        return cls("fixed", float(value))


@dataclass(frozen=True)
class RandAugmentConfig:
    """`stage2.fixmatch.randaugment:` — FixMatch's strong view: `n` RandAugment operations of magnitude `m` on
    the [0, 30] scale (31 bins) of torchvision's `RandAugment` and DALI's `auto_aug.rand_augment`, after the
    train augmentation. n = 2, m = 10: the strong augmentation of the PyTorch FixMatch re-implementation
    (kekmodel/FixMatch-pytorch, dataset/cifar.py: `RandAugmentMC(n=2, m=10)`); m on the scale of the
    RandAugment re-implementation the source recipe uses (ildoonet/pytorch-randaugment, seed 002)."""

    n: int = 2
    m: int = 10

    def __post_init__(self) -> None:
        if self.n < 1 or not 0 <= self.m <= 30:
            raise ValueError(f"need n >= 1 and m in [0, 30]; got n {self.n}, m {self.m}")


@dataclass(frozen=True)
class FixMatchConfig:
    """`stage2.fixmatch:` — FixMatch fine-tuning (Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning
    with Consistency and Confidence", NeurIPS 2020) of a method whose registry entry has an unlabelled part
    (fixmatch, fixmatch_lnr), on the pool of data.unlabeled_split.

    Per labelled batch of B images: mu x B pool images, each in a weak view (the train augmentation) and a
    strong one (weak + RandAugment, `randaugment`). The pseudo-label is argmax q, q = softmax of the weak view's
    logits (no gradient); a pool image counts when max q >= `tau` and passes the gate: it is kept with
    probability (n_min / n_c)^q_s for its pseudo-label c, the per-sample draw rate of `semi_sampler` (random:
    q_s = 0, keeps all; mean: 1; reverse: 2; n_c the labelled training counts; data/sampling.py
    keep_probabilities), the source recipe's `--semi-sampler` (seed 002). Loss = L_x + `lambda_u` x L_u, L_u the
    cross-entropy of the strong view against the pseudo-label, summed over the kept images and divided by mu x B
    (FixMatch's Eq. 4). mu 7, lambda_u 1, tau 0.95: the paper's defaults; semi_sampler mean: the source
    recipe's fine-tuning command. The backbone stays frozen (its BN in eval mode), except its last block with
    `train_last_block` (trained at the classifier's LR, lr_factor x lr, its BN in train mode).
    """

    mu: int = 7
    lambda_u: float = 1.0
    tau: float = 0.95
    train_last_block: bool = False
    semi_sampler: Sampler = "mean"
    randaugment: RandAugmentConfig = field(default_factory=RandAugmentConfig)

    def __post_init__(self) -> None:
        if not 0.0 < self.tau < 1.0:
            raise ValueError(f"tau must lie in (0, 1) (the confidence a pseudo-label needs), got {self.tau}")
        if self.mu < 1 or self.lambda_u < 0:
            raise ValueError(f"need mu >= 1 and lambda_u >= 0; got mu {self.mu}, lambda_u {self.lambda_u}")


@dataclass(frozen=True)
class Stage2Config(TrainConfig):
    """`stage2:` — classifier re-training on the same trainer, by default MiSLAS's recipe on LNR-flipped labels.

    The backbone is frozen (features under no_grad); with `shift_bn` its BatchNorm statistics are re-estimated
    on the class-balanced stream (MiSLAS's shift learning). The classifier trains at lr_factor * lr, the
    learnable weight scaling (LWS) at lr. Label-aware smoothing runs from `smooth_tail` (rarest class) to
    `smooth_head` (largest) along `smooth_profile`. `sampler` draws the training stream (data/sampling.py): a
    sample of class c with probability ∝ n_c^-q, random (q = 0, instance sampling), mean (q = 1, every class
    equally likely: MiSLAS's class-balanced stage 2) or reverse (q = 2); a method may fix its own.

    `method` names an entry of the stage-2 method registry (lnr_dist.stage2.registry: its labels, threshold
    policy, loss, sampler and backends); `plugins` are modules imported first (by the driver and every Ray
    worker), which may register more methods. `threshold`: see ThresholdPolicy. `backend`: images trains on
    images on Ray Train (the stage-2 job); features trains the same head recipe on cached stage-1 features
    in-process (features of un-augmented images; no BN shift); auto = cached features for the sweep's trials
    when the recipe allows it (no shift_bn) and images for a method's own run. A method that supports one
    backend only runs on it.

    The loss is the method's (its registry entry's loss factory, e.g. label-aware smoothing or
    `bias_compensation`): the inherited `loss` and `range_loss` keys are stage-1 settings, refused here when set.
    `fixmatch`: the settings of the methods that also train on the unlabelled pool (FixMatchConfig); the others
    ignore them.

    `rounds` (iterated LNR, issue 17; default 1 = plain LNR): K rounds for a method whose label policy iterates
    (lnr_dist.stage2.flip_sources: LNR's flips; the other methods ignore it). Round 1 is the method's run as
    with rounds 1; round r >= 2 predicts the training set with round r-1's stage-2 model, recomputes LNR's
    statistics and prior on round r-1's labels, flips again at round 1's threshold (re-tuned per round with
    tune.per_round) with round r's own uniforms, and trains stage 2 on the labels so reached (lnr_dist/rounds.py;
    every round under <folder>/rounds/round<r>/, the last one's results in <folder>).
    """

    RENAMED_KEYS: ClassVar[dict[str, str]] = {
        "balanced_sampling": "stage2.sampler (random | mean | reverse; balanced_sampling true was mean, false was "
        "random)"
    }

    epochs: int = 10
    lr: float = 0.1
    lr_factor: float = 1.0
    method: str = "lnr"
    plugins: tuple[str, ...] = ()
    backend: Literal["auto", "images", "features"] = "auto"
    smooth_head: float = 0.3
    smooth_tail: float = 0.0
    smooth_profile: Literal["concave", "linear", "convex"] = "concave"
    shift_bn: bool = False
    lws: bool = True
    sampler: Sampler = "mean"
    threshold: ThresholdPolicy = field(default_factory=ThresholdPolicy)
    checkpoint: str | None = None
    fixmatch: FixMatchConfig = field(default_factory=FixMatchConfig)
    rounds: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.rounds <= MAX_ROUND:
            raise ValueError(f"rounds must be in [1, {MAX_ROUND}] (1 = LNR once), got {self.rounds}")
        if not (0 <= self.smooth_tail <= 1 and 0 <= self.smooth_head <= 1) or self.lr_factor <= 0:
            raise ValueError("smoothing must lie in [0, 1] and lr_factor must be > 0")
        if self.loss != TrainConfig.loss or self.range_loss.enabled:  # not stage 1's default cross-entropy
            raise ValueError(
                "loss and range_loss are stage-1 settings: stage 2 trains with stage2.method's loss (a registry "
                "entry; e.g. one whose loss factory is lnr_dist.stage2.registry.bias_compensation)"
            )
        if self.backend == "features" and self.shift_bn:
            raise ValueError(
                "backend features trains on features computed once, so it cannot shift BN: set shift_bn false "
                "or backend images (or auto)"
            )


@dataclass(frozen=True)
class TuneConfig:
    """`tune:` — how `lnr-dist tune` picks the LNR threshold.

    A Ray Tune sweep, where `search` proposes the thresholds: grid, every value of `thresholds`; random,
    `num_samples` draws uniform in [search_min, search_max] (seeded by the experiment seed); optuna, `num_samples`
    proposals of Optuna's TPE sampler (Bergstra et al., NeurIPS 2011; Ray Tune's OptunaSearch) in the same range,
    the first `startup_trials` drawn at random, seeded by the experiment seed. TPE learns in rounds of
    `max_concurrent` trials (0: as many as the cluster runs at once) and is told a round's results only when the
    whole round has ended, so a rerun on the same cluster proposes the same thresholds (with early_stop asha only
    when trials run one at a time: ASHA's decisions depend on the order trials report). `early_stop`: none runs
    every trial to the end; asha stops poor trials early (ASHA, Li et al. 2020: after `grace_period` epochs, then at
    rungs `reduction_factor` times apart, only the top 1/reduction_factor continue). Only trials that ran the whole
    schedule can be chosen (an early-stopped trial's best epoch is not comparable with a finished one's); they pick
    on the validation `objective`, and only the chosen threshold's model sees the test split. A choice at the end
    of the searched range is flagged (the best may lie beyond). stage2.backend decides where trials train: on
    cached features (a classifier head on features computed once; auto's choice when stage2.shift_bn is off) or as
    stage 2 on Ray Train.

    Or no sweep: with `flip_budget` F in (0, 1), the threshold whose expected number of flips is F x the training
    set, by bisection on the inference job's sparse candidates (lnr_dist/lnr/budget.py; no training, no Ray Tune;
    needs infer.candidates_t_min).

    `per_round` (iterated LNR, stage2.rounds > 1): each round r >= 2 picks its own threshold among
    `tune.thresholds` on the validation `objective`, training a head on cached features per value (features
    backend only: on images a round keeps round 1's threshold); off, every round flips at round 1's threshold."""

    RENAMED_KEYS: ClassVar[dict[str, str]] = {
        "cached_features": "stage2.backend (auto | images | features)",
        "scheduler": "tune.search (grid | random | optuna) and tune.early_stop (none | asha); scheduler grid was "
        "search grid, scheduler asha was search random with early_stop asha",
    }

    search: Literal["grid", "random", "optuna"] = "grid"
    early_stop: Literal["none", "asha"] = "none"
    thresholds: tuple[float, ...] = (1.0, 2.0, 3.0)
    search_min: float = 0.0
    search_max: float = 20.0
    num_samples: int = 8
    # Optuna's own default is 10, meant for larger budgets: with the 8 trials of num_samples' default, TPE would
    # never leave its random start
    startup_trials: int = 4
    grace_period: int = 1
    reduction_factor: int = 2
    objective: Literal["balanced_acc", "top1", "few"] = "balanced_acc"
    epochs: int | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int = 0
    flip_budget: float | None = None
    per_round: bool = False

    def __post_init__(self) -> None:
        if self.search == "grid" and not self.thresholds:
            raise ValueError("a grid sweep needs at least one value in tune.thresholds")
        if self.search != "grid" and not self.search_min < self.search_max:
            raise ValueError("tune.search_min must be below tune.search_max")
        if self.num_samples < 1 or self.startup_trials < 1:
            raise ValueError("need tune.num_samples >= 1 and tune.startup_trials >= 1")
        if self.grace_period < 1 or self.reduction_factor < 2:
            raise ValueError("need tune.grace_period >= 1 and tune.reduction_factor >= 2")
        if self.flip_budget is not None:
            if not 0.0 < self.flip_budget < 1.0:
                raise ValueError(f"tune.flip_budget must lie in (0, 1) (a fraction of the training set), got "
                                 f"{self.flip_budget}")  # fmt: skip
            if self.search != "grid" or self.early_stop != "none":
                raise ValueError(f"tune.flip_budget finds the threshold without a sweep, so tune.search "
                                 f"{self.search} / tune.early_stop {self.early_stop} would go unused: drop "
                                 "tune.flip_budget, or leave search and early_stop at grid and none")  # fmt: skip


@dataclass(frozen=True)
class RayConfig:
    """`ray:` — workers of each Ray Train job. use_gpu null = use GPUs when CUDA is present; cpus_per_worker may
    be fractional (more workers than cores on a laptop). placement_strategy: PACK fills a node first, SPREAD puts
    workers on different nodes where it can (a multi-node allocation). address: an existing cluster (`launch`
    sets it to the allocation's head). max_failures: restarts of the worker group after a failure that is not
    bad input (a user error in a worker ends the run at once). start_timeout_s: how long a job waits for its
    workers to be placed on a cluster that autoscales or is busy with other jobs (workers that can never fit
    are refused before the run)."""

    num_workers: int = 2
    cpus_per_worker: float = 1.0
    use_gpu: bool | None = None
    max_failures: int = 2
    placement_strategy: Literal["PACK", "SPREAD"] = "PACK"
    address: str | None = None
    start_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if self.num_workers < 1 or self.cpus_per_worker <= 0 or self.max_failures < 0:
            raise ValueError("need num_workers >= 1, cpus_per_worker > 0, max_failures >= 0")
        if self.start_timeout_s <= 0:
            raise ValueError(f"start_timeout_s must be > 0, got {self.start_timeout_s}")

    @property
    def torch_threads(self) -> int:
        return max(1, int(self.cpus_per_worker))


@dataclass(frozen=True)
class FaultConfig:
    """`fault:` — deliberate failure for tests of restart and resume: rank `rank` raises at the start of
    epoch `raise_at_epoch` (the first time only when `once`); with `kill`, its process dies of SIGKILL instead
    (what an out-of-memory kill or a lost node looks like to Ray)."""

    raise_at_epoch: int | None = None
    rank: int = 0
    once: bool = True
    kill: bool = False


@dataclass(frozen=True)
class InferConfig:
    """`infer:` — the sharded prediction pass that feeds LNR.

    Every training sample is predicted `passes` times (train-time augmentation by default, as the paper does)
    and the softmax outputs are averaged, then cast to `predictions_dtype` (what `save_predictions` writes, so
    stored predictions reproduce the job's flips exactly). float32 by default; float16 halves the N x C file
    (iNaturalist: 437,513 x 8,142 is 14.2 GB in float32) at the price of probabilities rounded to ~3 digits,
    which moves z-scores slightly and so can change flips near the threshold. BatchNorm runs in eval mode; `bn_mode: train`
    reproduces the reference code, which predicted with the model in train mode (batch statistics).
    `candidates_t_min` also writes the sparse candidates for threshold sweeps at any threshold >= it.
    `checkpoint` defaults to the stage-1 best checkpoint of this run; `seed` to the experiment seed.
    """

    threshold: float = 14.5
    passes: int = 2
    augment: Literal["train", "eval"] = "train"
    bn_mode: Literal["eval", "train"] = "eval"
    batch_size: int = 256
    checkpoint: str | None = None
    seed: int | None = None
    save_predictions: bool = True
    predictions_dtype: Literal["float16", "float32"] = "float32"
    candidates_t_min: float | None = None

    def __post_init__(self) -> None:
        if self.passes < 1 or self.batch_size < 1:
            raise ValueError("need passes >= 1 and batch_size >= 1")
        if self.candidates_t_min is not None and self.candidates_t_min > self.threshold:
            raise ValueError(
                f"candidates_t_min ({self.candidates_t_min}) must be <= threshold ({self.threshold})"
            )


@dataclass(frozen=True)
class BinaryConfig:
    """`reproduce.binary:` — the binary long-tailed task built from the mini set's images (8x8 grey pixels):
    `majority_class` (label 0) against `minority_class` (label 1), the minority subsampled in training to
    `ratio` x the majority count; `ratios` x `thresholds` is the heat-map sweep."""

    enabled: bool = False
    majority_class: int = 1
    minority_class: int = 2
    ratio: float = 0.05
    threshold: float = 1.0
    ratios: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2)
    thresholds: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
    epochs: int = 200

    def __post_init__(self) -> None:
        if self.majority_class == self.minority_class:
            raise ValueError("binary.majority_class and binary.minority_class must differ")
        if not all(0 < r <= 1 for r in (self.ratio, *self.ratios)):
            raise ValueError("binary ratios must lie in (0, 1]")


@dataclass(frozen=True)
class ReproduceConfig:
    """`reproduce:` — what `lnr-dist reproduce` runs: `methods`, names in the stage-2 method registry
    (lnr_dist.stage2.registry; empty = every registered method, the built-in ones being ce, mixup: stage 1 only;
    mislas, lnr, random: stage 2 on the mixup backbone; smote, adasyn: oversampling of cached stage-1 features,
    head re-trained; bias_compensation, range_loss: MiSLAS's stage 2 on the stage-1 backbone of that loss; mining,
    mining_random: MiSLAS's head on cached features plus mining.budget annotated pool images, mined or random;
    the methods that need a pool are left out of "every" when data.unlabeled_split is unset) over
    `seeds` seeds (experiment seed, +1, ...). `published`: which paper numbers to print beside the table
    (cifar10_lt, cifar100_lt, imagenet_lt, places_lt; null = none). Where stage 2 trains is stage2.backend. Every
    other method is compared with each of `baselines` that ran (mining_random: so that mining's gain over random
    picking of as many pool images is a row beside its gain over mislas) (comparisons.csv: delta
    with a 95% interval from `bootstrap` paired, stratified resamples of the test images and the seeds; 0 = no
    interval)."""

    RENAMED_KEYS: ClassVar[dict[str, str]] = {"stage2_on": "stage2.backend (trainer is now images)"}

    methods: tuple[str, ...] = ()
    seeds: int = 1
    baselines: tuple[str, ...] = ("mislas", "random", "ce", "mining_random")
    bootstrap: int = 1000
    published: str | None = None
    binary: BinaryConfig = field(default_factory=BinaryConfig)

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise ValueError(f"reproduce.seeds must be >= 1, got {self.seeds}")
        if self.bootstrap < 0:
            raise ValueError(f"reproduce.bootstrap must be >= 0 (0 = no intervals), got {self.bootstrap}")


@dataclass(frozen=True)
class MiningConfig:
    """`mining:` — minority-class mining on the unlabelled pool (data.unlabeled_split), after Singh et al.,
    "Mining Minority-class Examples With Uncertainty Estimates", MMM 2022 (lnr_dist/stage2/mining.py).

    A re-calibration layer (a linear layer on the frozen stage-1 features, cross-entropy, Adam at `lr`,
    `recalibration_epochs`) turns features into calibrated logits; an autoencoder C -> hidden -> C (ReLU between
    layers, MSE, Adam at `lr`, `autoencoder_epochs`), both trained on the labelled training set, scores each pool
    image by its reconstruction error; the `budget` images with the largest error are mined (given to the
    annotator). `autoencoder_input`: what the autoencoder reconstructs, the calibrated `logits` (the paper's
    text and the issue) or their softmax `probabilities` (what the released notebook code feeds it). Defaults are
    the source recipe's (rc_epochs 15, lr 1e-3, batch size 64, autoencoder AE_INV_TINY 10-9-10 for 25 epochs);
    the budget of 50 is the smallest the source notebook mines (it shows 50, 100, 2,000 and 4,000), about a
    tenth of the mini set's 586-image pool. Seeded by the experiment seed.
    """

    budget: int = 50
    recalibration_epochs: int = 15
    autoencoder_epochs: int = 25
    lr: float = 1e-3
    batch_size: int = 64
    hidden: tuple[int, ...] = (10, 9, 10)
    autoencoder_input: Literal["logits", "probabilities"] = "logits"

    def __post_init__(self) -> None:
        if self.budget < 1:
            raise ValueError(f"mining.budget must be >= 1 (pool images to mine), got {self.budget}")
        if self.recalibration_epochs < 1 or self.autoencoder_epochs < 1 or self.batch_size < 1:
            raise ValueError(
                "mining.recalibration_epochs, mining.autoencoder_epochs and mining.batch_size must be >= 1, got "
                f"{self.recalibration_epochs}, {self.autoencoder_epochs}, {self.batch_size}"
            )
        if not self.lr > 0:
            raise ValueError(f"mining.lr must be > 0, got {self.lr}")
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"mining.hidden must list layer widths >= 1, got {list(self.hidden)}")


@dataclass(frozen=True)
class LoggingConfig:
    """`logging:` — what a run shows while it works. Outside a terminal, rank 0 of stage 1, stage 2 (images),
    inference and feature extraction logs images done, images/s and ETA every `log_every_s` seconds of a pass,
    and each epoch's metrics line is shown at most that often too (first and last epoch always; the others at
    DEBUG, `--log-level DEBUG`; all of them are in metrics.csv). In a terminal the same progress is a live bar.
    A section of its own, not under ray: or a stage: it is how every job shows progress, here or in a SLURM
    job's log, and no step hash or resume check reads it (changing it never re-runs a step)."""

    log_every_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.log_every_s > 0:
            raise ValueError(f"logging.log_every_s must be > 0 seconds, got {self.log_every_s}")


@dataclass(frozen=True)
class NeighboursConfig:
    """`neighbours:` — the methods that classify by nearest training neighbours on cached features (knn, ann,
    wann, wann_lnr) and the linear probe on the same features (lnr_dist/stage2/neighbours.py; Di Salvo et al., "An
    Embedding is Worth a Thousand Noisy Labels", TMLR 2025).

    Features: the stage-1 features (features/) or, with `embeddings`, a .npz file holding `train`, `val` and `test`
    arrays (N_split, D), row i = line i of that split file (e.g. a foundation model's embeddings); z-scored with the
    training rows' statistics, then `projection` none | pca | lda | flda (filtered LDA: LDA fitted on the training
    samples with k* < kmax) to `dim` dims (default: 200 for pca, C - 1 for lda / flda), then, with `metric`
    cosine, scaled to unit length. kNN votes with `k` neighbours; ANN / WANN with the reliability k*, the smallest
    odd k in [kmin, kmax) whose neighbours vote for a sample's own label (kmax if none); defaults k 11, kmin 11,
    kmax 51: the reference code's. `backend`: the exact search (auto: torch on a GPU, else FAISS, else
    scikit-learn; every backend gives the same lists). `workers`: Ray workers the queries are sharded over (each
    ray.cpus_per_worker CPUs, and a GPU where ray.use_gpu allows); 0 searches in the calling process, without Ray.
    """

    k: int = 11
    kmin: int = 11
    kmax: int = 51
    projection: Literal["none", "pca", "lda", "flda"] = "none"
    dim: int | None = None
    metric: Literal["euclidean", "cosine"] = "euclidean"
    backend: Literal["auto", "faiss", "torch", "sklearn"] = "auto"
    workers: int = 0
    embeddings: str | None = None

    def __post_init__(self) -> None:
        if self.kmin < 1 or self.kmin > self.kmax or self.kmin % 2 == 0 or self.kmax % 2 == 0:
            raise ValueError(
                f"kmin ({self.kmin}) and kmax ({self.kmax}) must be odd with 1 <= kmin <= kmax: k* is the smallest "
                "odd k in [kmin, kmax) whose neighbours vote for a sample's label, kmax if none (defaults 11 and 51)"
            )
        if self.k < 1:
            raise ValueError(f"k (kNN's neighbours) must be >= 1, got {self.k}")
        if self.dim is not None and self.dim < 1:
            raise ValueError(f"dim must be >= 1 (or null: the projection's default), got {self.dim}")
        if self.workers < 0:
            raise ValueError(
                f"workers must be >= 0 (0: search in this process, without Ray), got {self.workers}"
            )


@dataclass(frozen=True)
class ExperimentConfig:
    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    run_dir: str = "runs/experiment"
    seed: int = 0
    # per-epoch TensorBoard scalars in each training job's folder (train/scalars.py); off: no event files
    tensorboard: bool = True
    stage1: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    tune: TuneConfig = field(default_factory=TuneConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    fault: FaultConfig = field(default_factory=FaultConfig)
    reproduce: ReproduceConfig = field(default_factory=ReproduceConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    neighbours: NeighboursConfig = field(default_factory=NeighboursConfig)

    def __post_init__(self) -> None:
        if not 0 <= self.seed < 2**31:
            raise ValueError(f"seed must be in [0, 2**31), got {self.seed}")
        if (
            self.stage2.rounds > 1
            and self.infer.seed is not None
            and not 0 <= self.infer.seed < 2**ROUND_SEED_BITS
        ):
            raise ValueError(
                f"infer.seed must be in [0, 2**{ROUND_SEED_BITS}) with stage2.rounds > 1 (each round's draws get a key "
                f"of their own: lnr_dist/lnr/rng.py stream_key), got {self.infer.seed}"
            )
        # sweep trials run stage 2 for tune.epochs: a step schedule must still fit in that shorter run
        s2 = self.stage2
        if self.tune.epochs is not None and s2.milestones and s2.milestones[-1] > self.tune.epochs:
            raise ValueError(
                f"tune.epochs ({self.tune.epochs}) is shorter than the last of stage2.milestones "
                f"({s2.milestones[-1]}): raise tune.epochs or leave it unset (= stage2.epochs)"
            )
        if self.tune.flip_budget is not None and self.infer.candidates_t_min is None:
            raise ValueError(
                "tune.flip_budget is found on the inference job's sparse candidates: set infer.candidates_t_min "
                "(the lowest threshold the budget may need) and run `lnr-dist infer`"
            )

    def check_global_batch(self, *keys: str) -> None:
        """Batch sizes are global: each named `section.key` must split evenly over ray.num_workers."""
        for key in keys:
            section, name = key.split(".")
            value = getattr(getattr(self, section), name)
            if value % self.ray.num_workers:
                raise UserError(
                    f"{key} ({value}) must be divisible by ray.num_workers ({self.ray.num_workers}): "
                    "batch sizes are global"
                )

    def with_absolute_paths(self) -> ExperimentConfig:
        """Paths resolved against the current folder: Ray workers and SLURM tasks run elsewhere."""

        def absolute(path: str | None) -> str | None:
            return None if path is None else str(Path(path).expanduser().resolve())

        data = replace(
            self.data,
            root=absolute(self.data.root),
            train_split=absolute(self.data.train_split),
            val_split=absolute(self.data.val_split),
            test_split=absolute(self.data.test_split),
            unlabeled_split=absolute(self.data.unlabeled_split),
        )
        model = replace(self.model, pretrained_path=absolute(self.model.pretrained_path))
        infer = replace(self.infer, checkpoint=absolute(self.infer.checkpoint))
        stage2 = replace(self.stage2, checkpoint=absolute(self.stage2.checkpoint))
        neighbours = replace(self.neighbours, embeddings=absolute(self.neighbours.embeddings))
        return replace(self, data=data, model=model, infer=infer, stage2=stage2, neighbours=neighbours,
                       run_dir=absolute(self.run_dir))  # fmt: skip

    @property
    def layout(self) -> RunLayout:
        """Every path of this run folder (lnr_dist.core.layout)."""
        return RunLayout(Path(self.run_dir))
