"""Both loaders on the real mini set: sharding by global rank, labels, shapes, normalisation, padding,
the class-aware samplers and undecodable images. DALI runs for real, on the CPU (device_id=None)."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from lnr_dist.core.dist import RankContext
from lnr_dist.core.errors import UserError
from lnr_dist.data.check import structure_problem
from lnr_dist.data.loader import LoaderSpec, build_loader
from lnr_dist.data.sampling import class_weights, sampler_order, shard_of
from lnr_dist.data.splits import load_split

from ..conftest import mini_data_config

LOADERS = ["torch", pytest.param("dali", marks=pytest.mark.dali)]


def split_of(cfg, name="train"):
    return load_split(getattr(cfg, f"{name}_split"), cfg.root, cfg.num_classes, name)


def epoch_batches(cfg, split, spec, rank, world_size, epoch=0):
    loader = build_loader(cfg, split, spec, RankContext(rank, world_size))
    loader.set_epoch(epoch)
    batches = list(loader)
    assert len(batches) == len(loader)
    return batches


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_eval_sees_every_index_once_with_true_labels(mini_root, loader, world_size):
    cfg = mini_data_config(mini_root, loader=loader)
    split = split_of(cfg)
    shards = []
    for rank in range(world_size):
        batches = epoch_batches(cfg, split, LoaderSpec.evaluate(batch_size=32), rank, world_size)
        indices = torch.cat([b.indices for b in batches]).numpy()
        for b in batches:
            assert b.images.shape[1:] == (3, 32, 32) and b.images.dtype == torch.float32
            np.testing.assert_array_equal(b.labels.numpy(), split.labels[b.indices.numpy()])
        shards.append(indices)
    joined = np.concatenate(shards)
    assert len(joined) == len(split) and sorted(joined.tolist()) == list(range(len(split)))
    for a in range(world_size):
        for b in range(a + 1, world_size):
            assert not set(shards[a]) & set(shards[b])


@pytest.mark.parametrize("loader", LOADERS)
def test_eval_images_are_normalised_like_the_reference(mini_root, loader):
    cfg = mini_data_config(mini_root, loader=loader)
    split = split_of(cfg, "val")
    batches = epoch_batches(cfg, split, LoaderSpec.evaluate(batch_size=50), 0, 1)
    images = torch.cat([b.images for b in batches])
    indices = torch.cat([b.indices for b in batches]).numpy()
    with Image.open(split.full_path(int(indices[0]))) as image:
        expected = TF.normalize(TF.to_tensor(image.convert("RGB")), [0.5] * 3, [0.5] * 3)
    # 32x32 files at resize 32 / crop 32: both loaders only decode and normalise (x/255 - 0.5) / 0.5.
    assert torch.allclose(images[0].cpu(), expected, atol=0.02)
    assert images.min() >= -1.0 - 1e-6 and images.max() <= 1.0 + 1e-6


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("world_size", [2, 3])
def test_train_shards_cover_with_equal_batch_counts(mini_root, loader, world_size):
    cfg = mini_data_config(mini_root, loader=loader)
    split = split_of(cfg)
    seen, counts = [], []
    for rank in range(world_size):
        batches = epoch_batches(
            cfg, split, LoaderSpec.train(batch_size=32, seed=0), rank, world_size, epoch=1
        )
        counts.append(len(batches))
        seen.append(torch.cat([b.indices for b in batches]).numpy())
    assert len(set(counts)) == 1
    assert set(np.concatenate(seen).tolist()) == set(range(len(split)))


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("sampler", ["mean", "reverse"])
def test_class_aware_sampling_follows_the_class_weights(mini_root, loader, sampler):
    cfg = mini_data_config(mini_root, loader=loader)
    split = split_of(cfg)
    counts = np.bincount(split.labels, minlength=10)
    labels = []
    for epoch in range(4):
        for rank in range(2):
            for b in epoch_batches(cfg, split, LoaderSpec.train(64, seed=0, sampler=sampler), rank, 2, epoch):
                labels.append(b.labels.numpy())
    freq = np.bincount(np.concatenate(labels), minlength=10) / sum(map(len, labels))
    assert counts.max() / counts.min() > 50  # really long-tailed
    expected = class_weights(counts, sampler)
    if sampler == "mean":
        np.testing.assert_allclose(expected, 0.1)
    else:
        assert expected[counts.argmin()] > 0.3  # reverse: the rarest class draws far more than uniformly
    np.testing.assert_allclose(freq, expected, atol=0.035)


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("sampler", ["random", "mean", "reverse"])
def test_train_reads_the_sampler_order_sharded_by_global_rank(mini_root, loader, sampler):
    """Both loaders read this rank's padded shard of sampling.sampler_order (DALI's random order is the reader's
    own permutation: there only the coverage is checked)."""
    cfg = mini_data_config(mini_root, loader=loader)
    split = split_of(cfg)
    order = sampler_order(split.labels, sampler, seed=3, epoch=2)
    read = []
    for rank in range(3):
        batches = epoch_batches(cfg, split, LoaderSpec.train(32, seed=3, sampler=sampler), rank, 3, epoch=2)
        shard = shard_of(order, rank, 3, pad=True)
        indices = torch.cat([b.indices for b in batches]).numpy()
        read.append(indices[: shard.size])
        if loader == "torch" or sampler != "random":
            np.testing.assert_array_equal(indices[: shard.size], shard)
    if sampler == "random":
        assert set(np.concatenate(read).tolist()) == set(range(len(split)))


def test_torch_train_augmentation_is_keyed_by_sample_not_shard(mini_root):
    cfg = mini_data_config(mini_root)
    split = split_of(cfg)
    spec = LoaderSpec(batch_size=16, order="sequential", augment=True, seed=5)

    def by_index(world_size):
        out = {}
        for rank in range(world_size):
            for b in epoch_batches(cfg, split, spec, rank, world_size, epoch=3):
                out.update({int(i): img for i, img in zip(b.indices, b.images, strict=True)})
        return out

    one, three = by_index(1), by_index(3)
    assert all(torch.equal(one[i], three[i]) for i in one)
    other_epoch = {}
    for b in epoch_batches(cfg, split, spec, 0, 1, epoch=4):
        other_epoch.update({int(i): img for i, img in zip(b.indices, b.images, strict=True)})
    assert sum(not torch.equal(one[i], other_epoch[i]) for i in one) > len(one) // 2


def test_torch_workers_give_the_same_batches(mini_root):
    split = split_of(mini_data_config(mini_root))
    spec = LoaderSpec(batch_size=32, order="sequential", augment=True, seed=1)
    plain = epoch_batches(mini_data_config(mini_root), split, spec, 0, 1)
    workers = epoch_batches(mini_data_config(mini_root, num_threads=2), split, spec, 0, 1)
    assert all(torch.equal(a.images, b.images) for a, b in zip(plain, workers, strict=True))


@pytest.fixture()
def corrupt_root(tmp_path, mini_root):
    root = tmp_path / "corrupt"
    shutil.copytree(mini_root, root)
    first = (root / "Mini_LT_val.txt").read_text().splitlines()[3].rsplit(" ", 1)[0]
    (root / first).write_bytes((root / first).read_bytes()[:150])
    return root, first


@pytest.mark.parametrize("loader", LOADERS)
def test_undecodable_image_is_an_error_naming_file_and_line(corrupt_root, loader):
    root, bad = corrupt_root
    cfg = mini_data_config(root, loader=loader)
    with pytest.raises(UserError, match=rf"Mini_LT_val.txt:4: cannot decode image .*{bad}"):
        epoch_batches(cfg, split_of(cfg, "val"), LoaderSpec.evaluate(32), 0, 1)


@pytest.mark.dali
@pytest.mark.parametrize("damage", ["empty", "garbage"])
def test_dali_names_empty_and_non_image_files_before_decoding(tmp_path, mini_root, damage):
    # Without the check DALI 2.4 dies with SIGSEGV on such files (seen in CI), or says "File mapping failed".
    root = tmp_path / "damaged"
    shutil.copytree(mini_root, root)
    bad = (root / "Mini_LT_val.txt").read_text().splitlines()[6].rsplit(" ", 1)[0]
    size = (root / bad).stat().st_size
    (root / bad).write_bytes(b"" if damage == "empty" else np.random.default_rng(0).bytes(size))
    cfg = mini_data_config(root, loader="dali")
    with pytest.raises(
        UserError, match=rf"would stop the DALI loader(.|\n)*Mini_LT_val.txt:7: cannot decode .*{bad}"
    ):
        epoch_batches(cfg, split_of(cfg, "val"), LoaderSpec.evaluate(32), 0, 1)


@pytest.mark.dali
def test_dali_check_lets_a_whole_jpeg_with_padding_through(tmp_path, mini_root):
    root = tmp_path / "padded"
    shutil.copytree(mini_root, root)
    padded = (root / "Mini_LT_val.txt").read_text().splitlines()[0].rsplit(" ", 1)[0]
    (root / padded).write_bytes((root / padded).read_bytes() + bytes(200))  # the end marker is now far back
    assert structure_problem(root / padded) is not None  # the cheap look flags it, the decode clears it
    cfg = mini_data_config(root, loader="dali")
    split = split_of(cfg, "val")
    batches = epoch_batches(cfg, split, LoaderSpec.evaluate(32), 0, 1)
    assert sum(len(b.indices) for b in batches) == len(split)


def test_structure_check_spots_truncated_empty_and_foreign_files(tmp_path):
    jpeg, png = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(jpeg, "JPEG")
    Image.new("RGB", (16, 16), (200, 10, 10)).save(png, "PNG")
    files = {
        "whole.jpg": jpeg.getvalue(),
        "whole.png": png.getvalue(),
        "cut.jpg": jpeg.getvalue()[:-40],
        "cut.png": png.getvalue()[:-5],
        "empty.jpg": b"",
        "text.jpg": b"<html>not found</html>",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    found = {name: structure_problem(tmp_path / name) for name in files}
    assert found["whole.jpg"] is None and found["whole.png"] is None
    assert "truncated JPEG" in found["cut.jpg"] and "truncated PNG" in found["cut.png"]
    assert "empty file" in found["empty.jpg"] and "does not start like" in found["text.jpg"]
    assert "cannot read" in structure_problem(tmp_path / "missing.jpg")
    (tmp_path / "folder.jpg").mkdir()  # opens on Linux; reading it fails
    assert "cannot read" in structure_problem(str(tmp_path / "folder.jpg"))
    tiny = b"\xff\xd8\xff" + b"\x00" * 5 + b"\xff\xd9"  # shorter than the tail looked at: read whole
    (tmp_path / "tiny.jpg").write_bytes(tiny)
    assert structure_problem(str(tmp_path / "tiny.jpg")) is None
    (tmp_path / "tiny_cut.jpg").write_bytes(tiny[:-1])
    assert "truncated JPEG" in structure_problem(tmp_path / "tiny_cut.jpg")


def test_skip_corrupt_skips_counts_and_lists(corrupt_root):
    root, bad = corrupt_root
    cfg = mini_data_config(root, skip_corrupt=True)
    split = split_of(cfg, "val")
    loader = build_loader(cfg, split, LoaderSpec.evaluate(32), RankContext())
    seen = sum(len(b.indices) for b in loader)
    assert seen == len(split) - 1
    assert len(loader.skipped) == 1 and loader.skipped[0].endswith(bad)


def test_dali_refuses_skip_corrupt(mini_root):
    with pytest.raises(ValueError, match="skip_corrupt needs loader: torch"):
        mini_data_config(mini_root, loader="dali", skip_corrupt=True)


def shifted_match(augmented: torch.Tensor, original: torch.Tensor, padding: int) -> bool:
    """augmented == original shifted by (dy, dx) in [-padding, padding], zero(-1)-filled, maybe mirrored."""
    size = original.shape[-1]
    canvas = torch.full((3, size + 2 * padding, size + 2 * padding), -1.0)
    canvas[:, padding : padding + size, padding : padding + size] = original
    for image in (augmented, augmented.flip(-1)):
        for top in range(2 * padding + 1):
            for left in range(2 * padding + 1):
                if torch.allclose(canvas[:, top : top + size, left : left + size], image, atol=0.03):
                    return True
    return False


@pytest.mark.parametrize("loader", LOADERS)
def test_padded_random_crop_is_a_shifted_copy(mini_root, loader):
    cfg = mini_data_config(mini_root, loader=loader, train_crop="padded")
    split = split_of(cfg, "val")
    augmented = epoch_batches(cfg, split, LoaderSpec(batch_size=8, augment=True), 0, 1)[0]
    plain = epoch_batches(cfg, split, LoaderSpec.evaluate(batch_size=8), 0, 1)[0]
    originals = {int(i): img for i, img in zip(plain.indices, plain.images, strict=True)}
    for index, image in zip(augmented.indices, augmented.images, strict=True):
        assert shifted_match(image.cpu(), originals[int(index)].cpu(), padding=4)


@pytest.mark.dali
def test_dali_precheck_reads_unchanged_files_once_and_a_changed_file_again(tmp_path, mini_root, monkeypatch):
    from lnr_dist.data import checked, dali_loader

    monkeypatch.setattr(checked, "CHECKED_DIR", tmp_path / "records")
    looked = []
    real = dali_loader.image_problem
    monkeypatch.setattr(dali_loader, "image_problem", lambda path: looked.append(path) or real(path))
    root = tmp_path / "copy"
    shutil.copytree(mini_root, root)
    cfg = mini_data_config(root, loader="dali")
    split = split_of(cfg, "val")
    epoch_batches(cfg, split, LoaderSpec.evaluate(32), 0, 1)
    assert len(looked) == len(split)
    epoch_batches(cfg, split, LoaderSpec.evaluate(32), 0, 1)  # a new loader (a later job): the record holds
    assert len(looked) == len(split)
    bad = root / split.paths[6]
    bad.write_bytes(b"")  # changed since the record: every file of the shard is read again, and it is found
    with pytest.raises(UserError, match=r"would stop the DALI loader(.|\n)*Mini_LT_val.txt:7"):
        epoch_batches(cfg, split, LoaderSpec.evaluate(32), 0, 1)
    assert len(looked) == 2 * len(split)
