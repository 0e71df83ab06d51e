"""A record of image files the DALI loader's precheck found sound, so the next loader over the same unchanged
files skips reading them.

The precheck (`check.image_problem` on the first and last bytes of every file, the DALI loader's
`_check_files`) costs about 0.8 s per 58,000 files (13-14 us each on a 2-core machine), in every loader of every
job: ImageNet-LT's stage 1 alone builds three loaders per worker. A record is one empty file named by a stamp
(`files_stamp`: the rules' and the decoders' versions, the host, and each file's path, size, inode, modification
and change times), written after a check found nothing; a file that changed, moved, was copied or added changes
the stamp, and the files are read again. Stat-ing the files is what remains (~0.1 s per
58,000 files). Records live under ~/.cache/lnr-dist/checked_images, one stamp per host.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterable
from pathlib import Path

# bump when check.image_problem's rules change: records written under older rules stop counting (DALI's and PIL's
# versions are in every stamp as well)
CHECK_VERSION = 1
CHECKED_DIR: Path | None = None  # tests point it elsewhere; None: ~/.cache/lnr-dist/checked_images


def _records() -> Path | None:
    """The records' folder, or None when there is no home to keep them in (the check then always runs)."""
    if CHECKED_DIR is not None:
        return CHECKED_DIR
    try:
        return Path.home() / ".cache" / "lnr-dist" / "checked_images"
    except RuntimeError:  # no HOME and no passwd entry (a container under an arbitrary uid)
        return None


def _versions() -> str:
    import PIL
    from nvidia.dali import __version__ as dali_version

    return f"v{CHECK_VERSION} dali {dali_version} pil {PIL.__version__}"


def files_stamp(paths: Iterable[str]) -> str | None:
    """sha256 of the check's, DALI's and PIL's versions, the host, and each file's (path, size, inode, mtime_ns,
    ctime_ns), in order; None when a file cannot be stat-ed (the check itself then says why). ctime is the
    kernel's (a copy that keeps its mtime, `cp -p` or `rsync -a`, still gets a new one), the host keeps one
    node's record about its local disk from counting on another node."""
    digest = hashlib.sha256(f"{_versions()} {socket.gethostname()}".encode())
    parts = []
    for path in paths:
        try:
            info = os.stat(path)
        except OSError:
            return None
        parts.append(f"{path}\0{info.st_size}\0{info.st_ino}\0{info.st_mtime_ns}\0{info.st_ctime_ns}")
    digest.update("\0".join(parts).encode())
    return digest.hexdigest()


def checked_before(stamp: str | None) -> bool:
    records = _records()
    return stamp is not None and records is not None and (records / stamp).is_file()


def record_checked(stamp: str | None) -> None:
    """Remember that the files of `stamp` passed; a cache that cannot be written only costs the next check."""
    records = _records()
    if stamp is None or records is None:
        return
    try:
        records.mkdir(parents=True, exist_ok=True)
        (records / stamp).touch()
    except OSError:
        pass
