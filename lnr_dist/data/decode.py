"""How an image file becomes RGB pixels: one rule for both loaders, DALI 2.4's CPU decoder's.

DALI's `fn.decoders.image(output_type=RGB)` cannot be told what to do per mode, so its behaviour is the rule and
the PyTorch loader reproduces it (`to_rgb`). Measured with DALI 2.4.0 on files PIL wrote in every mode PIL opens
(tests/data/test_image_modes.py keeps checking it against real DALI):

- EXIF orientation is applied (DALI does for JPEG and PNG; PIL leaves it to the caller).
- 1, L, P, RGB, RGBA, LA, CMYK (and the other 8-bit modes): PIL's convert("RGB"). Grey is replicated, a palette
  expanded with its transparency ignored, alpha dropped, not composited (DALI drops it), CMYK as
  (255 - C)(255 - K) / 255 (DALI rounds differently: at most 1/255 apart).
- I;16 (16-bit grey): round(v * 255 / 65535), DALI's rule, exactly. PIL's own convert clips at 255 and gives a
  nearly all-white picture.
- F (32-bit float): values in [0, 1] scaled to 8 bits, round half up, clipped (DALI's rule for float TIFFs).
- I (32-bit integer): clipped to [0, 65535] and scaled as I;16. DALI refuses these TIFFs.
- 16-bit RGB(A) PNGs open as 8-bit in PIL (high byte) while DALI rounds: at most 1/255 apart.

Where DALI refuses a file PIL reads, or reads it as another picture, `dali_disagreement` says so, and
`lnr-dist data check` names the image: formats other than JPEG, PNG, BMP, TIFF, PNM, WebP and JPEG 2000 (GIF,
...), and TIFFs in mode 1 ("missing: BitsPerSample"), I ("Invalid sample_type") or LA (alpha read as green).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from ..core.errors import UserError

if TYPE_CHECKING:
    from .splits import Split

# PIL's format names of what DALI 2.4's CPU decoder reads (MPO: multi-picture JPEG, decoded as its first JPEG).
DALI_FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP", "TIFF", "PPM", "WEBP", "JPEG2000"})
# TIFF modes DALI 2.4 refuses (1, I) or decodes as another picture (LA).
DALI_TIFF_MODES_REFUSED = {"1": "bilevel", "I": "32-bit integer", "LA": "grey + alpha"}


def _grey_to_rgb(grey: np.ndarray) -> Image.Image:
    return Image.fromarray(grey.astype(np.uint8)).convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """An opened PIL image -> 8-bit RGB image, as DALI 2.4 decodes the same file (rules in the module docstring).

    Raises what PIL raises for a file it cannot decode (OSError, ValueError, ...).
    """
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        return _grey_to_rgb((values + 128) // 257)  # = round(v * 255 / 65535), no ties
    if mode == "F":
        values = np.asarray(image, dtype=np.float32)
        return _grey_to_rgb(np.floor(np.clip(values * np.float32(255) + np.float32(0.5), 0, 255)))
    return image.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Decode the file at `path` to 8-bit RGB by `to_rgb`; raises what PIL raises for an undecodable file."""
    with Image.open(path) as image:
        return to_rgb(image)


def dali_disagreement(image: Image.Image) -> str | None:
    """None when DALI 2.4 decodes this (opened, not yet decoded) image to the picture `to_rgb` gives, else why
    not and what to do."""
    kind = image.format or "unknown"
    if kind not in DALI_FORMATS:
        return f"DALI cannot decode {kind} images (the PyTorch loader can): convert it to PNG or JPEG"
    if kind == "TIFF" and image.mode in DALI_TIFF_MODES_REFUSED:
        what = DALI_TIFF_MODES_REFUSED[image.mode]
        return (
            f"DALI {'misreads' if image.mode == 'LA' else 'cannot decode'} {what} TIFF images (mode "
            f"{image.mode}; the PyTorch loader reads them): convert it to PNG"
        )
    return None


def pixel_features(split: Split, side: int, skip_corrupt: bool) -> np.ndarray:
    """(N, side * side * 3) float32: each image of `split` decoded by `to_rgb`'s rule, resized to side x side
    (PIL bilinear, antialiased when shrinking) and flattened in (row, column, channel) order, pixels / 255 in
    [0, 1]: the per-sample features of the instance-dependent label noise (data/label_noise.py).

    Raises UserError naming `file:line` for an image PIL cannot decode; with `skip_corrupt` its row stays 0.
    """
    rows = np.zeros((len(split), side * side * 3), dtype=np.float32)
    for i in range(len(split)):
        try:
            rgb = load_rgb(split.full_path(i))
        except Exception as exc:  # any decode failure is about this one file; say which
            if skip_corrupt:
                continue
            raise UserError(
                f"{split.where(i)}: cannot decode image {split.full_path(i)}: {exc} (data.label_noise.pattern "
                "instance reads every training image; `lnr-dist data check --decode` lists every such image)"
            ) from exc
        pixels = np.asarray(rgb.resize((side, side), Image.BILINEAR), dtype=np.float32)
        rows[i] = pixels.reshape(-1) / np.float32(255)
    return rows
