"""Both loaders give the same picture for every PIL mode, or `data check` names the image (issue 14, case 4).

Images are written in each mode PIL opens (1, L, LA, P, RGBA, CMYK, I;16, I, F, and RGB with an EXIF rotation)
and in the formats that carry it. The PyTorch loader runs here; real DALI (CPU) runs in a subprocess, because
its CPU decoder can kill the process on input it does not expect.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lnr_dist.core import config as config_lib
from lnr_dist.core.dist import RankContext
from lnr_dist.core.errors import UserError
from lnr_dist.data.check import check_data
from lnr_dist.data.decode import load_rgb
from lnr_dist.data.loader import LoaderSpec, build_loader
from lnr_dist.data.splits import load_split

from ..conftest import mini_data_config

SIZE = 32
# Measured worst case: CMYK, palette TIFFs and 16-bit RGB differ by one 8-bit level (rounding); the fault this
# guards against (16-bit grey read as white) differs by up to 255 levels.
TOLERANCE = 1.5 / 255


def _pattern() -> tuple[np.ndarray, np.ndarray]:
    """(SIZE, SIZE, 3) uint8 RGB with no symmetry (a rotation shows) and (SIZE, SIZE) uint16 with all-distinct
    values spread over 0..65535."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    rgb = np.stack([x * 255 // (SIZE - 1), y * 255 // (SIZE - 1), (x * y) % 256], -1).astype(np.uint8)
    return rgb, ((x + SIZE * y) * 65535 // (SIZE * SIZE - 1)).astype(np.uint16)


def _png16(path: Path, rgb16: np.ndarray) -> None:
    """A 16-bit RGB PNG (PIL cannot write one)."""
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb16)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", SIZE, SIZE, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def write_agreeing(root: Path) -> list[str]:
    """Files both loaders must read alike, one per mode and format; returns their names."""
    rgb, grey16 = _pattern()
    image = Image.fromarray(rgb)
    grey = image.convert("L")
    palette = image.quantize(64)
    alpha = Image.fromarray(rgb[..., 2])
    rotated = Image.Exif()
    rotated[0x0112] = 6  # EXIF orientation: rotate 90 degrees clockwise to display
    files = {
        "1.png": grey.convert("1"),
        "1.bmp": grey.convert("1"),
        "L.png": grey,
        "L.jpg": grey,
        "LA.png": Image.merge("LA", (grey, alpha)),
        "P.png": palette,
        "P.tif": palette,
        "P.bmp": palette,
        "RGBA.png": Image.merge("RGBA", (*image.split(), alpha)),
        "RGBA.webp": Image.merge("RGBA", (*image.split(), alpha)),
        "CMYK.jpg": image.convert("CMYK"),
        "CMYK.tif": image.convert("CMYK"),
        "I16.png": Image.fromarray(grey16),
        "I16.tif": Image.fromarray(grey16),
        "F.tif": Image.fromarray(grey16.astype(np.float32) / 65535),
    }
    for name, picture in files.items():
        extra = (
            {"lossless": True} if name.endswith(".webp") else {"quality": 95} if name.endswith(".jpg") else {}
        )
        picture.save(root / name, **extra)
    palette.save(root / "P-transparent.png", transparency=3)
    image.save(root / "RGB-rotated.jpg", quality=95, exif=rotated.tobytes())
    _png16(root / "RGB16.png", np.stack([grey16, grey16[::-1], grey16.T], -1))
    return [*files, "P-transparent.png", "RGB-rotated.jpg", "RGB16.png"]


def write_refused(root: Path) -> list[str]:
    """Files DALI 2.4 refuses or reads as another picture, while PIL reads them."""
    rgb, grey16 = _pattern()
    grey = Image.fromarray(rgb).convert("L")
    Image.fromarray(rgb).save(root / "RGB.gif")
    grey.convert("1").save(root / "1.tif")
    Image.fromarray(grey16.astype(np.int32) * 3).save(root / "I.tif")
    Image.merge("LA", (grey, Image.fromarray(rgb[..., 2]))).save(root / "LA.tif")
    return ["RGB.gif", "1.tif", "I.tif", "LA.tif"]


def data_config(root: Path, names: list[str], loader: str = "torch"):
    """The files as a train split (labels 0, 1, 0, ...), with empty val and test splits; decoded pixels in [0, 1]."""
    split, empty = root / f"split-{len(names)}.txt", root / "empty.txt"
    split.write_text("".join(f"{name} {i % 2}\n" for i, name in enumerate(names)))
    empty.write_text("")
    return mini_data_config(
        root, train_split=str(split), val_split=str(empty), test_split=str(empty), num_classes=2,
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), loader=loader,
    )  # fmt: skip


def torch_pictures(cfg) -> dict[int, torch.Tensor]:
    split = load_split(cfg.train_split, cfg.root, cfg.num_classes)
    batches = list(build_loader(cfg, split, LoaderSpec.evaluate(64), RankContext(0, 1)))
    return {int(i): image for b in batches for i, image in zip(b.indices, b.images, strict=True)}


# Runs in a subprocess: the real DALI loader over the agreeing files, then DALI's decoder alone on each refused
# file in its own pipeline; one JSON line per refused file, so a crash leaves the files after it unreported.
DALI_SCRIPT = r"""
import json, sys
import numpy as np
from nvidia.dali import fn, pipeline_def, types
from lnr_dist.core import config as config_lib
from lnr_dist.data.config import DataConfig
from lnr_dist.data.loader import LoaderSpec, build_loader
from lnr_dist.data.splits import load_split
from lnr_dist.core.dist import RankContext

args = json.loads(sys.argv[1])
cfg = config_lib.from_dict(DataConfig, args["data"])
split = load_split(cfg.train_split, cfg.root, cfg.num_classes)
batches = list(build_loader(cfg, split, LoaderSpec.evaluate(64), RankContext(0, 1)))
np.savez(args["out"], images=np.concatenate([b.images.numpy() for b in batches]),
         indices=np.concatenate([b.indices.numpy() for b in batches]))
for n, path in enumerate(args["refused"]):
    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def decode():
        encoded, _ = fn.readers.file(files=[path], labels=[0])
        return fn.decoders.image(encoded, device="cpu", output_type=types.RGB)
    try:
        pipe = decode()
        pipe.build()
        np.save(f"{args['out']}.{n}.npy", np.array(pipe.run()[0].as_array()[0]))
        result = "decoded"
    except RuntimeError:
        result = "refused"
    print(json.dumps({"path": path, "result": result}), flush=True)
"""


@pytest.fixture(scope="module")
def modes(tmp_path_factory):
    root = tmp_path_factory.mktemp("modes")
    return root, write_agreeing(root), write_refused(root)


@pytest.fixture(scope="module")
def dali_run(modes):
    """(dataset index -> DALI loader's picture, refused file -> (outcome, DALI's picture or None))."""
    root, agreeing, refused = modes
    cfg = data_config(root, agreeing, loader="dali")
    out = root / "dali.npz"
    args = {"data": config_lib.to_dict(cfg), "out": str(out), "refused": [str(root / n) for n in refused]}
    done = subprocess.run(
        [sys.executable, "-c", DALI_SCRIPT, json.dumps(args)], capture_output=True, text=True, timeout=300
    )
    assert out.is_file(), done.stderr[-3000:]
    with np.load(out) as saved:
        pictures = {
            int(i): torch.from_numpy(image)
            for i, image in zip(saved["indices"], saved["images"], strict=True)
        }
    outcome = {Path(r["path"]).name: r["result"] for r in map(json.loads, done.stdout.splitlines())}
    refusals = {}
    for n, name in enumerate(refused):
        result = outcome.get(name, f"crashed (exit {done.returncode})")
        decoded = np.load(f"{out}.{n}.npy") if result == "decoded" else None
        refusals[name] = (result, decoded)
    return pictures, refusals


def test_sixteen_bit_grey_is_scaled_to_eight_bits_not_clipped_to_white(modes):
    root, _, _ = modes
    _, grey16 = _pattern()
    for name in ("I16.png", "I16.tif"):
        pixels = np.asarray(load_rgb(root / name))
        np.testing.assert_array_equal(pixels[..., 0], np.round(grey16 * (255 / 65535)).astype(np.uint8))
        assert (pixels[..., 0] == 255).mean() < 0.01  # the old reading: 99.9% white


@pytest.mark.dali
def test_both_loaders_give_the_same_picture_for_every_mode(modes, dali_run):
    root, agreeing, _ = modes
    mine = torch_pictures(data_config(root, agreeing))
    dali, _ = dali_run
    assert sorted(dali) == sorted(mine) == list(range(len(agreeing)))
    worst = {name: float((mine[i] - dali[i]).abs().max()) for i, name in enumerate(agreeing)}
    assert all(error <= TOLERANCE for error in worst.values()), worst
    rotated = mine[agreeing.index("RGB-rotated.jpg")]
    unrotated = torch.from_numpy(_pattern()[0]).permute(2, 0, 1) / 255.0
    # EXIF orientation applied (the red and green ramps; blue is too busy for JPEG to keep it within 0.1)
    assert (rotated[:2] - unrotated.rot90(-1, dims=(1, 2))[:2]).abs().max() < 0.1


@pytest.mark.dali
def test_what_dali_refuses_or_misreads_is_named_by_data_check_and_the_dali_loader(modes, dali_run):
    root, _, refused = modes
    _, refusals = dali_run
    for name, (result, decoded) in refusals.items():
        # DALI really does refuse these, or decodes another picture than the PyTorch loader's.
        assert (
            result != "decoded" or np.abs(decoded.astype(int) - np.asarray(load_rgb(root / name))).max() > 50
        ), name
    cfg = data_config(root, refused)
    for decode in (False, True):
        named = {Path(p.reason.split(":")[0]).name: p.reason for p in check_data(cfg, decode=decode)}
        assert sorted(named) == sorted(refused), named
        assert named["RGB.gif"].endswith(
            "DALI cannot decode GIF images (the PyTorch loader can): convert it to PNG or JPEG"
        )
        assert "DALI misreads grey + alpha TIFF images (mode LA" in named["LA.tif"]
        assert "DALI cannot decode 32-bit integer TIFF images (mode I" in named["I.tif"]
        assert "DALI cannot decode bilevel TIFF images (mode 1" in named["1.tif"]
    split = load_split(cfg.train_split, cfg.root, cfg.num_classes)
    with pytest.raises(UserError, match=r"4 image\(s\) would stop the DALI loader or differ") as caught:
        list(
            build_loader(data_config(root, refused, "dali"), split, LoaderSpec.evaluate(8), RankContext(0, 1))
        )
    assert all(
        f"split-4.txt:{line}: {name}: DALI" in str(caught.value) for line, name in enumerate(refused, 1)
    )
