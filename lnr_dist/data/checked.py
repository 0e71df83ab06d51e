"""A record of image files the DALI loader's precheck found sound, so the next loader over the same unchanged
files skips reading them.

The precheck (`check.image_problem` on the first and last bytes of every file, the DALI loader's
`_check_files`) costs about 1 s per 58,000 files, in every loader of every job: ImageNet-LT's stage 1 alone builds
three loaders per worker. A record is one empty file named by a stamp of (CHECK_VERSION, each file's path, size
and modification time in ns), written after a check found nothing; a file that changed, moved or was added
changes the stamp, and the files are read again. Stat-ing the files is what remains (~0.1 s per 58,000 files).
Records live under CHECKED_DIR (~/.cache/lnr-dist/checked_images; a shared home on a cluster serves every node).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

CHECKED_DIR = Path.home() / ".cache" / "lnr-dist" / "checked_images"
# bump when check.image_problem's rules change: records written under older rules stop counting
CHECK_VERSION = 1


def files_stamp(paths: Iterable[str]) -> str | None:
    """sha256 of the check's version and each file's (path, size, mtime_ns), in order; None when a file
    cannot be stat-ed (the check itself then says why)."""
    digest = hashlib.sha256(f"v{CHECK_VERSION}".encode())
    parts = []
    for path in paths:
        try:
            info = os.stat(path)
        except OSError:
            return None
        parts.append(f"{path}\0{info.st_size}\0{info.st_mtime_ns}")
    digest.update("\0".join(parts).encode())
    return digest.hexdigest()


def checked_before(stamp: str | None) -> bool:
    return stamp is not None and (CHECKED_DIR / stamp).is_file()


def record_checked(stamp: str | None) -> None:
    """Remember that the files of `stamp` passed; a cache that cannot be written only costs the next check."""
    if stamp is None:
        return
    try:
        CHECKED_DIR.mkdir(parents=True, exist_ok=True)
        (CHECKED_DIR / stamp).touch()
    except OSError:
        pass
