"""Per-epoch scalars as TensorBoard event files (`torch.utils.tensorboard`), one TensorBoard run per training
job folder: `<folder>/tensorboard/` (RunLayout.tensorboard), written by the trainer's rank 0 and by a head on
cached features (features/heads.py: the sweep's trials, its chosen threshold, the features backend).

`tensorboard --logdir <run_dir>` shows every job of a run folder; the sweep's trials are runs of their own
(tune/trial_t<t>/tensorboard), so TensorBoard overlays one curve per threshold under each tag.

The global step is the 0-based epoch (metrics.csv's `epoch`). A job that resumes at epoch k opens its writer
with purge_step=k: TensorBoard's reader then drops whatever an earlier attempt wrote at steps >= k (the
trainer writes an epoch's scalars after its checkpoint, but a damaged last.pt resumes from last.prev.pt, one
epoch back), so each epoch is one point. A job that starts at epoch 0 starts its curves over: the folder's
earlier event files are removed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from ..core.layout import RunLayout
from ..experiment import ExperimentConfig

# metrics.csv column (train/trainer.py CSV_FIELDS; a head's epoch row) -> TensorBoard tag. TensorBoard groups
# tags by the prefix before '/'; val/* are percentages (ECE too) except val/nll (nats per sample).
EPOCH_TAGS: dict[str, str] = {
    "train_loss": "train/loss",
    "train_acc": "train/acc",
    "lr": "train/lr",
    "images_per_second": "train/images_per_second",
    "unlabeled_loss": "train/unlabeled_loss",
    "pool_confident": "train/pool_confident",
    "pool_kept": "train/pool_kept",
    "val_top1": "val/top1",
    "val_balanced_acc": "val/balanced_acc",
    "val_many": "val/many",
    "val_medium": "val/medium",
    "val_few": "val/few",
    "val_ece": "val/ece",
    "val_nll": "val/nll",
}
EVENT_FILES = "events.out.tfevents.*"


def scalars_folder(cfg: ExperimentConfig, job_folder: Path) -> Path | None:
    """Where a training job in `job_folder` writes its scalars (RunLayout.tensorboard), None with
    `tensorboard: false`."""
    return RunLayout.tensorboard(job_folder) if cfg.tensorboard else None


class EpochScalars:
    """One TensorBoard run's per-epoch scalars; with `folder` None (ranks other than 0, `tensorboard: false`)
    every call does nothing.

    Each `write` flushes, so that a job that fails later (or is stopped by ASHA) keeps every epoch it finished;
    `close` (or leaving the `with` block) closes the file. `first_epoch` > 0 (a resumed job) purges the steps
    >= first_epoch written before; 0 removes the folder's earlier event files.
    """

    def __init__(self, folder: Path | None, first_epoch: int = 0) -> None:
        self._writer = None
        if folder is None:
            return
        from torch.utils.tensorboard import SummaryWriter

        folder = Path(folder)
        if first_epoch == 0:
            for old in folder.glob(EVENT_FILES):
                old.unlink()
        self._writer = SummaryWriter(str(folder), purge_step=first_epoch or None)

    def write(self, epoch: int, row: Mapping[str, Any]) -> None:
        """The EPOCH_TAGS columns of `row` (others ignored; a missing or non-finite value is left out, as in
        metrics.csv) at step `epoch`, flushed."""
        if self._writer is None:
            return
        for key, tag in EPOCH_TAGS.items():
            value = row.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                self._writer.add_scalar(tag, float(value), epoch)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> EpochScalars:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
