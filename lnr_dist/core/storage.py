"""Atomic writes: every result and checkpoint is written to a temp file in its folder, then renamed.

A reader (or a restarted job) therefore sees either the previous complete file or the new complete file, never
a partial one, even when the writer is killed mid-write.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import mmap
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..lnr.table import FlipTable


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temp file beside `path`; on clean exit fsync and rename it over `path`, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; results should be readable like any other file
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def _missing(value: Any) -> bool:
    """None, NaN or an infinity: a number that is not there (an empty group, a metric with no samples)."""
    return value is None or (isinstance(value, float | np.floating) and not math.isfinite(value))


def write_csv(path: str | os.PathLike, rows: Iterable[dict[str, Any]], fields: Sequence[str]) -> None:
    """A header of `fields` and one line per row (keys outside `fields` are left out; missing ones, None and
    non-finite numbers are empty cells, never `nan`)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: "" if _missing(v) else v for k, v in row.items()} for row in rows)
    write_text(path, buffer.getvalue())


def finite(metrics: dict[str, Any]) -> dict[str, Any]:
    """`metrics` without its missing values (None, NaN, infinities): what goes to Ray's reports, whose own
    result files would otherwise carry NaN tokens."""
    return {k: v for k, v in metrics.items() if not _missing(v)}


def strict_json(obj: Any) -> Any:
    """`obj` with NaN/Infinity replaced by None and NumPy scalars/arrays by Python values, so that it serialises
    as standard JSON (RFC 8259 has no NaN; Python's json writes a `NaN` token other parsers reject)."""
    if isinstance(obj, dict):
        return {str(k): strict_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return strict_json(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Standard JSON (missing numbers are null; `allow_nan=False` makes a slip an error, not a NaN token)."""
    write_text(path, json.dumps(strict_json(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Uncompressed npz without pickled objects."""
    with atomic_open(path, "wb") as handle:
        np.savez(handle, **arrays)


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def write_with(path: str | os.PathLike, writer: Callable[[IO[bytes]], None]) -> None:
    """Atomic write through a callable that writes to a binary handle (e.g. torch.save)."""
    with atomic_open(path, "wb") as handle:
        writer(handle)


def sha256_arrays(*arrays: np.ndarray, chunk_rows: int = 65536) -> str:
    """sha256 over dtype, shape and raw bytes of each array, block by block (memory-mapped arrays stay on disk)."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        # a whole read-only map as np.load(mmap_mode="r") opens it: its own bytes are the file's (a slice or view
        # of one keeps the parent's filename and offset, and a copy-on-write map may differ from its file)
        if (isinstance(array, np.memmap) and isinstance(array.base, mmap.mmap) and array.mode == "r"
                and array.filename and array.flags.c_contiguous):  # fmt: skip
            _update_from_file(digest, array.filename, array.offset, array.nbytes)
            continue
        for start in range(0, max(array.shape[0], 1), chunk_rows):
            digest.update(np.ascontiguousarray(array[start : start + chunk_rows]).tobytes())
    return digest.hexdigest()


def _update_from_file(digest, filename: str, offset: int, nbytes: int, block: int = 1 << 22) -> None:
    """The same bytes as the memory map's, read with plain reads: touching a map's pages would count the whole
    file in this process's RSS (a worker hashing N x C predictions would hold them all)."""
    with open(filename, "rb") as handle:
        handle.seek(offset)
        while nbytes > 0:
            chunk = handle.read(min(block, nbytes))
            if not chunk:
                raise OSError(f"{filename}: ended {nbytes} bytes early")
            digest.update(chunk)
            nbytes -= len(chunk)


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_flip_table(path: str | os.PathLike, table: FlipTable) -> None:
    """flips.npz with keys index, from, to (int64, no pickle), written atomically."""
    write_npz(path, **{"index": table.index, "from": table.source, "to": table.target})


def load_flip_table(path: str | os.PathLike) -> FlipTable:
    with np.load(path, allow_pickle=False) as data:
        return FlipTable(data["index"], data["from"], data["to"])


def flip_table_sha256(table: FlipTable) -> str:
    """Content hash of a flip table (independent of the npz container), recorded by stage 2 checkpoints."""
    return sha256_arrays(table.index, table.source, table.target)
