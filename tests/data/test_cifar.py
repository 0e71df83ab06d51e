"""CIFAR-LT from the standard python batches (a small real-format folder made from digits in the test)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from lnr_dist.core.errors import UserError
from lnr_dist.data.cifar import exponential_profile, make_cifar_lt
from lnr_dist.data.splits import load_split


def write_cifar10(folder, per_class_train: int = 30, per_class_test: int = 5) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)

    def batch(count_per_class, offset):
        labels = np.repeat(np.arange(10), count_per_class)
        rng.shuffle(labels)
        images = []
        for c in labels:
            pick = np.flatnonzero(digits.target == c)[offset + len(images) % 10]
            grey = np.kron(digits.images[pick], np.ones((4, 4))) * 15
            images.append(np.repeat(grey[None], 3, axis=0).astype(np.uint8).reshape(-1))
        return {b"data": np.stack(images), b"labels": labels.tolist()}

    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch(per_class_train // 5, i)))
    (folder / "test_batch").write_bytes(pickle.dumps(batch(per_class_test, 0)))


def test_cifar10_lt_profile_validation_and_test(tmp_path):
    write_cifar10(tmp_path / "cifar-10-batches-py")
    files = make_cifar_lt(tmp_path, tmp_path / "out", 10, imb_factor=0.1, val_per_class=2)
    train = load_split(files["train"], tmp_path / "out", 10)
    val = load_split(files["val"], tmp_path / "out", 10)
    test = load_split(files["test"], tmp_path / "out", 10)
    counts = np.bincount(train.labels, minlength=10)
    expected = exponential_profile(30, 0.1, 10)
    expected[0] = min(expected[0], 30 - 2)  # the head class gives its last images to validation
    np.testing.assert_array_equal(counts, expected)
    assert set(np.bincount(val.labels, minlength=10)) == {2}
    assert set(np.bincount(test.labels, minlength=10)) == {5}
    assert not set(train.paths) & set(val.paths)


def test_missing_cifar_says_what_to_put_where(tmp_path):
    with pytest.raises(UserError, match=r"data_batch_1: CIFAR batch not found\. Nothing is downloaded"):
        make_cifar_lt(tmp_path, tmp_path / "out", 10, 0.01)
