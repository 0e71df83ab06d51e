"""What one worker process costs: its resident memory at entry, at its first batch and at its peak, and when the
first batch came. One meter per process (workers are processes of their own), read by runtime/usage.py.

Start-up is "step start to first batch" (the driver's clock at the step's start, this process's at the first
batch): everything before it (Ray placing the workers, imports, reading the split, building the model and the
loader) is start-up, and a worker's growth is its peak over its RSS at the first batch, i.e. what the pass itself
holds (the inference job's dense predictions, the optimizer's state). The RSS now comes from /proc/self/status
(None where there is no /proc); the peak from there too, else from getrusage.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass, field


def _status_mib(key: str) -> float | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return None


def rss_mib() -> float | None:
    """This process's resident set size now, MiB (VmRSS of /proc/self/status); None where there is no /proc."""
    return _status_mib("VmRSS:")


def peak_rss_mib() -> float:
    """This process's RSS high-water mark, MiB: VmHWM of /proc/self/status, else getrusage's ru_maxrss. The same
    kernel counter, but VmHWM is computed as it is read, while ru_maxrss was seen below the VmRSS read just before
    it (by 0.3 MiB: the test's first version failed on that)."""
    peak = _status_mib("VmHWM:")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


@dataclass
class Meter:
    """Marks of one worker: `enter()` when its function starts, `batch(n)` per batch of n images."""

    entry_unix: float | None = None
    rss_entry_mib: float | None = None
    first_batch_unix: float | None = None
    rss_first_batch_mib: float | None = None
    images: int = 0
    _clock: object = field(default=time.time, repr=False)

    def enter(self) -> None:
        self.entry_unix, self.rss_entry_mib = self._clock(), rss_mib()
        self.first_batch_unix = self.rss_first_batch_mib = None
        self.images = 0

    def batch(self, images: int) -> None:
        if self.first_batch_unix is None:
            self.first_batch_unix, self.rss_first_batch_mib = self._clock(), rss_mib()
        self.images += int(images)


METER = Meter()  # this process's
