"""`lnr-dist data check`: find every defect of the split files before any cluster time is spent."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from .config import DataConfig
from .splits import SplitProblem, parse_split

SPLITS = ("train", "val", "test")


def split_files(cfg: DataConfig) -> dict[str, str]:
    return {"train": cfg.train_split, "val": cfg.val_split, "test": cfg.test_split}


def decode_problem(path: Path) -> str | None:
    """None when PIL can fully decode the image, else the reason."""
    try:
        with Image.open(path) as image:
            image.load()
    except Exception as exc:  # PIL raises many types for broken files; every one is a finding here
        return f"cannot decode image {path.name}: {type(exc).__name__}: {exc}"
    return None


# Leading bytes of the formats DALI decodes, and for JPEG/PNG the bytes every complete file ends with.
_MAGIC = {
    "JPEG": b"\xff\xd8\xff",
    "PNG": b"\x89PNG\r\n\x1a\n",
    "BMP": b"BM",
    "TIFF": b"II*\x00",
    "TIFF (big-endian)": b"MM\x00*",
    "WebP": b"RIFF",
    "JPEG 2000": b"\x00\x00\x00\x0cjP  ",
}
_TRAILER = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}
_TAIL_BYTES = 64  # a complete JPEG may carry a few padding bytes after its end marker


def structure_problem(path: Path) -> str | None:
    """A cheap look (first and last bytes, no decoding) for the usual damage: an empty or truncated file, or
    one that is no image. None when it looks whole; may flag a valid file with unusual padding, so callers
    confirm with `decode_problem`."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as file:
            head = file.read(12)
            file.seek(max(size - _TAIL_BYTES, 0))
            tail = file.read()
    except OSError as exc:
        return f"cannot read {path}: {exc}"
    if size == 0:
        return f"empty file {path.name}"
    kind = next((name for name, magic in _MAGIC.items() if head.startswith(magic)), None)
    if kind is None:
        return f"{path.name} does not start like a JPEG, PNG, BMP, TIFF, WebP or JPEG 2000 image"
    if kind in _TRAILER and _TRAILER[kind] not in tail:
        return f"{path.name} is a truncated {kind} (no end marker)"
    return None


def check_data(cfg: DataConfig, decode: bool = False, progress: bool = False) -> list[SplitProblem]:
    """Every problem in the three splits: format, labels, duplicates (also across splits), missing files and
    images that do not decode: with `decode` every image is decoded, else only those that look empty, truncated
    or foreign in their first and last bytes (seconds for ImageNet-LT; what the DALI loader looks at)."""
    problems: list[SplitProblem] = []
    seen_in: dict[str, tuple[str, int]] = {}
    for name, file in split_files(cfg).items():
        if not Path(file).is_file():
            problems.append(SplitProblem(file, 0, f"{name} split file not found"))
            continue
        split, found = parse_split(file, cfg.root, cfg.num_classes, name)
        problems += found
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
            elif (decode or structure_problem(path) is not None) and (reason := decode_problem(path)):
                problems.append(SplitProblem(file, line, reason))
    return problems
