"""Shared fixtures: the real Fashion-MNIST files, found through NIN_DATA_DIR."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nin_helpers as nh  # noqa: E402


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The folder with FashionMNIST/raw/. Tests that need it are skipped when it is unset, except on CI."""
    if not os.environ.get(nh.DATA_DIR_VARIABLE):
        if os.environ.get("CI"):
            pytest.fail(f"{nh.DATA_DIR_VARIABLE} is not set on CI; .ci/run must point it at the data")
        pytest.skip(f"set {nh.DATA_DIR_VARIABLE} to a folder with FashionMNIST/raw/ to run data tests")
    return nh.resolve_data_dir()


@pytest.fixture(scope="session")
def fashion(data_dir: Path) -> nh.FashionMNISTData:
    return nh.load_fashion_mnist(data_dir, download=False)
