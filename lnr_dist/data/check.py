"""`lnr-dist data check`: find every defect of the split files before any cluster time is spent."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from .config import DataConfig
from .decode import dali_disagreement, load_rgb
from .splits import SplitProblem, empty_class_problem, parse_split, split_key

SPLITS = ("train", "val", "test")


def split_files(cfg: DataConfig) -> dict[str, str]:
    """The split files to check, by name; the pool (`pool`) last, when data.unlabeled_split is set, so that an
    image it shares with another split is reported on the pool's line."""
    files = {"train": cfg.train_split, "val": cfg.val_split, "test": cfg.test_split}
    if cfg.unlabeled_split is not None:
        files["pool"] = cfg.unlabeled_split
    return files


def decode_problem(path: Path) -> str | None:
    """None when the PyTorch loader's decoder (`decode.load_rgb`) reads the whole image, else the reason."""
    try:
        load_rgb(path)
    except Exception as exc:  # PIL raises many types for broken files; every one is a finding here
        return f"cannot decode image {path.name}: {type(exc).__name__}: {exc}"
    return None


def disagreement_problem(path: Path) -> str | None:
    """None when both loaders give the same picture of the file (see `decode.dali_disagreement`), else why not.
    Reads the header only."""
    try:
        with Image.open(path) as image:
            reason = dali_disagreement(image)
    except Exception as exc:  # as in decode_problem
        return f"cannot decode image {path.name}: {type(exc).__name__}: {exc}"
    return None if reason is None else f"{path.name}: {reason}"


# Leading bytes of the formats DALI decodes, and for JPEG/PNG the bytes every complete file ends with.
_MAGIC = {
    "JPEG": b"\xff\xd8\xff",
    "PNG": b"\x89PNG\r\n\x1a\n",
    "BMP": b"BM",
    "TIFF": b"II*\x00",
    "TIFF (big-endian)": b"MM\x00*",
    "WebP": b"RIFF",
    "PNM": tuple(b"P%d" % n for n in range(1, 7)),  # PNM has no trailer to check
    "JPEG 2000": b"\x00\x00\x00\x0cjP  ",
}
_TRAILER = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}
_TAIL_BYTES = 64  # a complete JPEG may carry a few padding bytes after its end marker


def _look(path: str | os.PathLike) -> tuple[str | None, str | None]:
    """(the format the first bytes announce, or None; what looks wrong in the first and last bytes, or None).

    Plain descriptors and pread: the DALI loader's precheck runs this on every file of a split (58,000 per worker
    at ImageNet-LT's shape). Measured over 20,000 small JPEGs on a 2-core machine: `image_problem` takes 13-14 us
    per file this way, 35-43 us with a Path, its stat and a file object."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            head = os.pread(fd, 12, 0)
            tail = os.pread(fd, _TAIL_BYTES, max(size - _TAIL_BYTES, 0))
        finally:
            os.close(fd)
    except OSError as exc:
        return None, f"cannot read {os.fspath(path)}: {exc}"
    name = os.path.basename(path)
    if size == 0:
        return None, f"empty file {name}"
    kind = next((fmt for fmt, magic in _MAGIC.items() if head.startswith(magic)), None)
    if kind is None:
        return None, f"{name} does not start like a JPEG, PNG, BMP, TIFF, PNM, WebP or JPEG 2000 image"
    if kind in _TRAILER and _TRAILER[kind] not in tail:
        return kind, f"{name} is a truncated {kind} (no end marker)"
    return kind, None


def structure_problem(path: str | os.PathLike) -> str | None:
    """A cheap look (first and last bytes, no decoding) for the usual damage: an empty or truncated file, or
    one that is no image. None when it looks whole; may flag a valid file with unusual padding, so callers
    confirm with `decode_problem`."""
    return _look(path)[1]


def image_problem(path: str | os.PathLike, decode: bool = False) -> str | None:
    """What would stop a loader on this image, or make the two loaders see different pictures; None if nothing.

    With `decode` every image is decoded; without, only those whose first and last bytes look wrong
    (`structure_problem`) are, and TIFFs have their header read (their mode decides whether DALI agrees).
    """
    kind, look = _look(path)
    if look is not None or decode:
        reason = decode_problem(Path(path))
        if reason is not None:
            return reason
    elif kind not in ("TIFF", "TIFF (big-endian)"):
        return None
    return disagreement_problem(Path(path))


def check_data(cfg: DataConfig, decode: bool = False, progress: bool = False) -> list[SplitProblem]:
    """Every problem in the three splits and the pool (data.unlabeled_split, when set): format, labels, classes
    with no training image, duplicates (also across splits: a pool image in another split is reported on the
    pool's line), missing files, images that do not decode and images the two loaders would see differently
    (`image_problem`): with `decode` every image is decoded, else only those that look empty, truncated or
    foreign in their first and last bytes (seconds for ImageNet-LT; what the DALI loader looks at)."""
    problems: list[SplitProblem] = []
    seen_in: dict[str, tuple[str, int]] = {}
    for name, file in split_files(cfg).items():
        if not Path(file).is_file():
            problems.append(SplitProblem(file, 0, f"{name} split file not found ({split_key(name)})"))
            continue
        split, found = parse_split(file, cfg.root, cfg.num_classes, name)
        problems += found
        if name == "train" and (reason := empty_class_problem(split, cfg.num_classes)) is not None:
            problems.append(SplitProblem(file, 0, reason))
        samples: Iterable[int] = range(len(split))
        if progress:
            samples = tqdm(samples, desc=f"check {name}", unit="img", disable=None)
        for i in samples:
            line = int(split.lines[i])
            relative = split.paths[i]
            if relative in seen_in:
                other, other_line = seen_in[relative]
                problems.append(
                    SplitProblem(file, line, f"{relative!r} is also in the {other} split (line {other_line})")
                )
            seen_in.setdefault(relative, (name, line))
            path = Path(split.full_path(i))
            if not path.is_file():
                problems.append(SplitProblem(file, line, f"missing file {path}"))
            elif reason := image_problem(path, decode):
                problems.append(SplitProblem(file, line, reason))
    return problems
