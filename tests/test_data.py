"""Fashion-MNIST loading, checking and batching, on the real files."""

import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision import transforms

import nin_helpers as nh


def copy_raw(data_dir: Path, destination: Path) -> Path:
    raw = destination / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in nh.FASHION_MNIST_FILES:
        shutil.copy(data_dir / "FashionMNIST" / "raw" / name, raw / name)
    return raw


def test_loader_returns_real_data(fashion):
    assert fashion.train_images.shape == (60_000, 28, 28)
    assert fashion.test_images.shape == (10_000, 28, 28)
    assert fashion.train_images.dtype == torch.uint8
    assert fashion.train_labels.dtype == torch.int64
    mean = fashion.train_images.float().div(255).mean().item()
    std = fashion.train_images.float().div(255).std().item()
    assert mean == pytest.approx(0.2860, abs=1e-4)
    assert std == pytest.approx(0.3530, abs=1e-4)
    assert torch.bincount(fashion.train_labels).tolist() == [6000] * 10
    assert torch.bincount(fashion.test_labels).tolist() == [1000] * 10


def test_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv(nh.DATA_DIR_VARIABLE, str(tmp_path / "from_env"))
    assert nh.resolve_data_dir(tmp_path / "argument") == tmp_path / "argument"
    assert nh.resolve_data_dir() == tmp_path / "from_env"
    monkeypatch.delenv(nh.DATA_DIR_VARIABLE)
    assert nh.resolve_data_dir() == nh.DEFAULT_DATA_DIR


def test_resize_matches_pil_within_one_level(fashion):
    images = fashion.test_images[:32]
    ours = nh.resize_batch(images, 224)
    pil_pipeline = transforms.Compose([transforms.Resize(224), transforms.ToTensor()])
    reference = torch.stack([pil_pipeline(Image.fromarray(image.numpy(), mode="L")) for image in images])
    assert ours.shape == reference.shape == (32, 1, 224, 224)
    assert (ours - reference).abs().max().item() <= 1 / 255 + 1e-6


def test_batches_cover_every_image_once(fashion):
    subset = fashion.subset(train=1000, test=10)
    generator = torch.Generator().manual_seed(0)
    batches = list(nh.iterate_batches(subset.train_images, subset.train_labels, 128, 67, generator))
    assert len(batches) == 8
    assert batches[0][0].shape == (128, 1, 67, 67)
    assert batches[-1][0].shape == (1000 - 7 * 128, 1, 67, 67)
    assert batches[0][0].dtype == torch.float32
    labels = torch.cat([y for _, y in batches])
    assert torch.bincount(labels, minlength=10).tolist() == torch.bincount(subset.train_labels, minlength=10).tolist()


def test_verify_accepts_canonical_files(data_dir):
    assert nh.verify_fashion_mnist(data_dir) == data_dir / "FashionMNIST" / "raw"


def test_truncated_file_is_named(data_dir, tmp_path):
    raw = copy_raw(data_dir, tmp_path)
    path = raw / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(nh.DataError, match="t10k-images-idx3-ubyte.*truncated"):
        nh.load_fashion_mnist(tmp_path, download=False)


def test_wrong_data_set_is_detected(data_dir, tmp_path):
    # Same size and IDX header as the real file, other pixels: what a wrong mirror serves.
    raw = copy_raw(data_dir, tmp_path)
    path = raw / "train-images-idx3-ubyte"
    content = bytearray(path.read_bytes())
    content[16:] = bytes(255 - b for b in content[16:])
    path.write_bytes(bytes(content))
    with pytest.raises(nh.DataError) as error:
        nh.load_fashion_mnist(tmp_path, download=False)
    assert "train-images-idx3-ubyte" in str(error.value)
    assert "not the Fashion-MNIST file" in str(error.value)
    assert "MNIST" in str(error.value)


def test_missing_files_without_download(tmp_path):
    with pytest.raises(nh.DataError) as error:
        nh.load_fashion_mnist(tmp_path, download=False)
    message = str(error.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in message
    for name in nh.FASHION_MNIST_FILES:
        assert name in message
    assert nh.DATA_DIR_VARIABLE in message


def test_failed_download_leaves_nothing(monkeypatch, tmp_path):
    requested = []

    def forbidden(request, *args, **kwargs):
        url = request.full_url if isinstance(request, urllib.request.Request) else request
        requested.append(url)
        raise urllib.error.HTTPError(url, 403, "Forbidden", {}, None)

    monkeypatch.setattr(urllib.request, "urlopen", forbidden)
    root = tmp_path / "data"
    with pytest.raises(nh.DataError) as error:
        nh.load_fashion_mnist(root, download=True)
    message = str(error.value)
    assert len(requested) >= 1
    assert str(root / "FashionMNIST" / "raw") in message
    for name in nh.FASHION_MNIST_FILES:
        assert name in message
    assert nh.DATA_DIR_VARIABLE in message
    assert not root.exists() or not any(root.rglob("*"))


def test_raw_folder_given_as_root(data_dir):
    raw = data_dir / "FashionMNIST" / "raw"
    with pytest.raises(nh.DataError) as error:
        nh.load_fashion_mnist(raw, download=False)
    message = str(error.value)
    assert f"the data folder should be {data_dir}" in message
    assert nh.DATA_DIR_VARIABLE in message
