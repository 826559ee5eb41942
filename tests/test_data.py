"""Fashion-MNIST loading: idx parsing, clear errors, split, batch shapes."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
import torch

from conftest import make_fmnist_like, write_idx
from csp_ablate.data.fashion_mnist import FashionMNISTDataModule, read_idx
from csp_ablate.errors import ConfigError


def test_read_idx_roundtrip_plain_and_gz(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for compress in (True, False):
        path = write_idx(tmp_path / f"x{compress}-idx3-ubyte", arr, compress=compress)
        np.testing.assert_array_equal(read_idx(path), arr)


def test_missing_root_names_path_and_fixes(tmp_path):
    dm = FashionMNISTDataModule(root=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError) as info:
        dm.setup()
    msg = str(info.value)
    assert str(tmp_path / "nowhere") in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "data.download=true" in msg


def test_truncated_file_is_reported_as_corrupt(tmp_path):
    root = make_fmnist_like(tmp_path / "d", n_train=50, n_test=20)
    path = root / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(ConfigError, match="Corrupt Fashion-MNIST file .*train-images.*truncated"):
        FashionMNISTDataModule(root=str(root), val_size=10).setup()


def test_garbage_file_is_reported_as_corrupt(tmp_path):
    root = make_fmnist_like(tmp_path / "d", n_train=50, n_test=20)
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(b"this is not gzip at all")
    with pytest.raises(ConfigError, match="Corrupt Fashion-MNIST file .*t10k-labels"):
        FashionMNISTDataModule(root=str(root), val_size=10).setup()


def test_torchvision_download_layout_is_found(tmp_path, tiny_fmnist):
    raw = tmp_path / "FashionMNIST" / "raw"
    shutil.copytree(tiny_fmnist, raw)
    dm = FashionMNISTDataModule(root=str(tmp_path), val_size=100)
    dm.setup()
    assert len(dm.test_set) == 300


@pytest.mark.parametrize("img_size, channels", [(32, 3), (28, 1), (64, 3)])
def test_batches_have_model_shape(tiny_fmnist, img_size, channels):
    dm = FashionMNISTDataModule(root=str(tiny_fmnist), val_size=200, img_size=img_size, channels=channels,
                                batch_size=16, resize="pad" if img_size != 64 else "bilinear")
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, channels, img_size, img_size) and x.dtype == torch.float32
    assert y.shape == (16,) and y.dtype == torch.int64
    if channels == 3:
        assert torch.equal(x[:, 0], x[:, 2])  # grey replicated
    assert len(dm.train_set) == 1000 and len(dm.val_set) == 200


def test_split_is_fixed_and_subsets_apply(tiny_fmnist):
    a = FashionMNISTDataModule(root=str(tiny_fmnist), val_size=200)
    b = FashionMNISTDataModule(root=str(tiny_fmnist), val_size=200)
    a.setup(), b.setup()
    assert torch.equal(a.val_set.labels, b.val_set.labels)
    c = FashionMNISTDataModule(root=str(tiny_fmnist), val_size=200, train_subset=64, eval_subset=32)
    c.setup()
    assert (len(c.train_set), len(c.val_set), len(c.test_set)) == (64, 32, 32)


def test_padding_keeps_the_image_centred(tiny_fmnist):
    dm = FashionMNISTDataModule(root=str(tiny_fmnist), val_size=200, img_size=32, channels=1)
    dm.setup()
    x, _ = dm.test_set[[0]]
    border = x[0, 0, :2, :]
    assert torch.allclose(border, torch.full_like(border, (0 - 0.2860) / 0.3530))


@pytest.mark.skipif(not (__import__("pathlib").Path("/usr/share/datasets/fashion-mnist").exists()),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_embedded_debian_copy_loads():
    dm = FashionMNISTDataModule(train_subset=10)
    dm.setup()
    assert len(dm.test_set) == 10000 and len(dm.val_set) == 5000
    assert dm.test_set.labels.bincount().tolist() == [1000] * 10
