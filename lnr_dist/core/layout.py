"""Every path of a run folder, in one place: jobs, the sweep, reproduce and launch ask a `RunLayout` for a path
instead of joining strings (a renamed file or folder is one edit here).

A run folder (`run_dir`) holds one backbone's pipeline:

    <run_dir>/stage1/        checkpoints/{last,best}.pt, metrics.csv, results.json, test_logits.npz, config.yaml,
                             tensorboard/ (per-epoch scalars; so has every training job's folder, below)
    <run_dir>/infer/         flips.npz, summary.json, predictions.npy, labels.npy, candidates.npz
    <run_dir>/tune/          sweep.csv, sweep.md, sweep.png, chosen_threshold.json, trial_t<t>/, chosen/
                             (trial_t<t>/tensorboard/: each trial's curves, one TensorBoard run per threshold)
    <run_dir>/features/      {train,val,test}.npy (+ pool.npy when data.unlabeled_split is set), meta.json
    <run_dir>/mine/          mined.csv, summary.json, precision_recall.png, mined_classes.png (`lnr-dist mine`)
    <run_dir>/label_noise.json  data.label_noise's record (pattern, rate, realised rate, transitions), when on
    <run_dir>/stage2/        like stage1/ (the stage-2 job's default output)
    <run_dir>/ray/           Ray Train / Tune storage (worker logs, trial folders)
    <run_dir>/logs/          <command>.log: each `lnr-dist <command>`'s screen, Ray's own messages included
    <run_dir>/slurm/         logs/ (submitit), ray-<job id>/ (an allocation's Ray head address)

`lnr-dist reproduce` writes one run folder per seed and per backbone below its root:

    <root>/seed<k>/          the default backbone's run folder (above), plus methods/<name>/, binary/ and steps/
    <root>/seed<k>/<name>/   another backbone's run folder (e.g. ce/: stage 1 without mixup)
    <root>/results.md, results.csv, results_per_seed.csv, comparisons.csv, figures/, reproduce_config.yaml

Iterated LNR (stage2.rounds > 1) keeps every round inside the method's stage-2 folder (stage2/ or
methods/<name>/), whose own results.json and test_logits.npz are the last round's:

    <folder>/rounds/round<r>/   flips.npz (round r's flips: round r-1's labels -> round r's), cumulative_flips.npz
                                (the dataset's labels -> round r's: what its stage 2 trains on), labels.npy (the
                                labels round r flips, round r-1's), summary.json (counts, flips, metrics; written
                                last: the round is done), infer/ (round >= 2 on images: the sharded re-prediction),
                                predictions.npy (round >= 2 on features), sweep.csv (tune.per_round), setup.json,
                                stage2/ (the round's stage-2 run)
    <folder>/rounds.csv, rounds.png   flips and accuracy per round
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class RoundLayout:
    """The paths of one round of iterated LNR: `root` = <folder>/rounds/round<r> (RunLayout.round)."""

    root: Path
    round: int

    @property
    def flips(self) -> Path:
        """Round r's own flips (from round r-1's labels)."""
        return self.root / "flips.npz"

    @property
    def cumulative_flips(self) -> Path:
        """From the dataset's labels to round r's: the table round r's stage 2 trains on."""
        return self.root / "cumulative_flips.npz"

    @property
    def labels(self) -> Path:
        """(N,) int64: the labels round r flips (round r-1's; the dataset's for round 1)."""
        return self.root / "labels.npy"

    @property
    def summary(self) -> Path:
        """Written last: a round with this file is finished."""
        return self.root / "summary.json"

    @property
    def infer(self) -> Path:
        """Round >= 2 on images: the sharded re-prediction with round r-1's stage-2 model (infer/'s files)."""
        return self.root / "infer"

    @property
    def predictions(self) -> Path:
        """Round >= 2 on cached features: (N, C) float32 softmax of round r-1's head on the training features."""
        return self.root / "predictions.npy"

    @property
    def sweep_csv(self) -> Path:
        """tune.per_round: the round's thresholds and their validation metrics."""
        return self.root / "sweep.csv"

    @property
    def stage2(self) -> Path:
        """The round's stage-2 run (results.json, test_logits.npz; checkpoints/ on images, head.pt on features)."""
        return self.root / "stage2"

    @property
    def stage2_checkpoint(self) -> Path:
        """The round's stage-2 model on images: what round r+1's inference predicts with."""
        return self.stage2 / "checkpoints" / "best.pt"

    @property
    def setup(self) -> Path:
        """Written first: the setup (config key, previous flips) the round runs on; another setup redoes it."""
        return self.root / "setup.json"


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run folder. `root` is `run_dir` as the config gives it (made absolute by the caller
    where workers or SLURM tasks read it: ExperimentConfig.with_absolute_paths)."""

    root: Path

    def stage(self, stage: str) -> Path:
        """A training job's folder: `stage1` or `stage2`."""
        return self.root / stage

    # what a job writes in its own folder, wherever that folder is (a stage folder, methods/<name>/, tune/chosen/,
    # the folder given as a job's `out`, the flips job's `out`)
    @staticmethod
    def results(folder: Path) -> Path:
        """results.json of a training job (stage 1, stage 2, a head on cached features) in its folder."""
        return Path(folder) / "results.json"

    @staticmethod
    def head(folder: Path) -> Path:
        """head.pt of a stage-2 run on cached features (the chosen epoch's classifier head, features/heads.py)."""
        return Path(folder) / "head.pt"

    @staticmethod
    def tensorboard(folder: Path) -> Path:
        """TensorBoard event files of a training job in its folder (train/scalars.py: per-epoch scalars, one
        TensorBoard run per folder)."""
        return Path(folder) / "tensorboard"

    @staticmethod
    def summary(folder: Path) -> Path:
        """summary.json of the inference or flips job in its folder."""
        return Path(folder) / "summary.json"

    # iterated LNR (stage2.rounds > 1), inside a stage-2 folder (stage2/, methods/<name>/ or a job's `out`)
    @staticmethod
    def round(folder: Path, round: int) -> RoundLayout:
        return RoundLayout(Path(folder) / "rounds" / f"round{round}", round)

    @staticmethod
    def rounds_csv(folder: Path) -> Path:
        """One line per round: flips, threshold, validation and test metrics."""
        return Path(folder) / "rounds.csv"

    @staticmethod
    def rounds_figure(folder: Path) -> Path:
        """Flips and few-shot accuracy per round."""
        return Path(folder) / "rounds.png"

    def checkpoint(self, stage: str, which: str = "best") -> Path:
        return self.stage(stage) / "checkpoints" / f"{which}.pt"

    def backbone_checkpoint(self, override: str | None = None) -> Path:
        """The stage-1 model that inference, cached features and stage 2 start from: `override`
        (infer.checkpoint / stage2.checkpoint) when set, else this run's stage-1 best checkpoint."""
        return Path(override) if override else self.checkpoint("stage1")

    # inference (infer/)
    @property
    def infer(self) -> Path:
        return self.root / "infer"

    def infer_file(self, name: str) -> Path:
        """flips.npz, summary.json, predictions.npy, labels.npy or candidates.npz."""
        return self.infer / name

    # the threshold sweep (tune/)
    @property
    def tune(self) -> Path:
        return self.root / "tune"

    @property
    def chosen_threshold(self) -> Path:
        return self.tune / "chosen_threshold.json"

    @property
    def sweep_csv(self) -> Path:
        """One line per trial threshold (tune/sweep.py SWEEP_FIELDS)."""
        return self.tune / "sweep.csv"

    def tune_trial(self, threshold: float) -> Path:
        """A sweep trial's stage-2 folder (trials on images); on cached features it holds only the trial's
        tensorboard/."""
        return self.tune / f"trial_t{threshold:g}"

    @property
    def tune_chosen(self) -> Path:
        """The chosen threshold's stage-2 folder (trials on images), evaluated once on test."""
        return self.tune / "chosen"

    # cached stage-1 features (features/)
    @property
    def features(self) -> Path:
        return self.root / "features"

    def feature_file(self, split: str) -> Path:
        """train, val, test or pool (the unlabelled pool's, when data.unlabeled_split is set)."""
        return self.features / f"{split}.npy"

    @property
    def features_meta(self) -> Path:
        """The sha256 of the checkpoint the cached features came from (a new checkpoint invalidates them)."""
        return self.features / "meta.json"

    # minority-class mining on the unlabelled pool (mine/)
    @property
    def mine(self) -> Path:
        return self.root / "mine"

    def mine_file(self, name: str) -> Path:
        """mined.csv, summary.json, precision_recall.png or mined_classes.png."""
        return self.mine / name

    def log(self, command: str) -> Path:
        """`lnr-dist <command>`'s screen on this run folder, appended per run, with what the screen leaves out
        (Ray's own messages; progress lines of a live bar)."""
        return self.root / "logs" / f"{command}.log"

    @property
    def label_noise(self) -> Path:
        """What data.label_noise did to the training labels (data/splits.py noise_record), written by every job
        when it is on."""
        return self.root / "label_noise.json"

    # Ray and SLURM
    @property
    def ray(self) -> Path:
        return self.root / "ray"

    @property
    def slurm_logs(self) -> Path:
        return self.root / "slurm" / "logs"

    def slurm_share(self, job_id: str) -> Path:
        """Where an allocation's head publishes the Ray address for the other tasks."""
        return self.root / "slurm" / f"ray-{job_id}"

    # reproduce: the root's seeds, and a seed folder's methods, steps and other backbones
    def seed(self, seed: int) -> RunLayout:
        return RunLayout(self.root / f"seed{seed}")

    def backbone(self, folder: str) -> RunLayout:
        """Another backbone's run folder inside this one ('' = this one)."""
        return RunLayout(self.root / folder) if folder else self

    @property
    def methods(self) -> Path:
        """A seed folder's stage-2 methods, one folder each."""
        return self.root / "methods"

    def method(self, name: str) -> Path:
        return self.methods / name

    @property
    def binary_results(self) -> Path:
        """A seed folder's binary task (reproduce.binary)."""
        return self.root / "binary" / "results.json"

    @property
    def steps(self) -> Path:
        return self.root / "steps"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    def report_file(self, name: str) -> Path:
        """results.md, results.csv, results_per_seed.csv, comparisons.csv, reproduce_config.yaml."""
        return self.root / name
