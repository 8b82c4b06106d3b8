"""Shared fixtures: tiny data sets in the real CIFAR layouts, the shared real-data pack."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")  # CSV logging in tests; no wandb service
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
PACK = SHARED_DATA / "cifar10-jpeg.npz"


def write_cifar10(root: Path, n_train: int = 100, n_test: int = 40, seed: int = 0, learnable: bool = False) -> Path:
    """Write ``root/cifar-10-batches-py`` with random images (5 train batches + test batch).

    With ``learnable``, each class gets a distinct colour tint so a tiny model can learn it.
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def make(n: int) -> dict:
        y = rng.integers(0, 10, n)
        x = rng.integers(0, 256, (n, 3, 32, 32)).astype(np.float32)
        if learnable:
            tint = np.stack([np.linspace(0, 1, 10), np.linspace(1, 0, 10), (np.arange(10) % 3) / 2.0], 1)
            x = 0.5 * x + 127 * tint[y][:, :, None, None]
        return {"data": x.clip(0, 255).astype(np.uint8).reshape(n, 3072), "labels": y.tolist()}

    per = [n_train // 5 + (1 if i < n_train % 5 else 0) for i in range(5)]
    for i, n in enumerate(per, 1):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(make(n), f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(make(n_test), f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return root


@pytest.fixture
def tiny_cifar10(tmp_path: Path) -> Path:
    """A data dir holding a 100-train / 40-test random CIFAR-10 in the python layout."""
    return write_cifar10(tmp_path / "data")


@pytest.fixture(scope="module")
def linear_model_set():
    """A linear model on 8 x 8 images (eval mode), 20 uint8 images and the labels it predicts for them, so
    it is right on every clean example (for crafting and reading stored adversarial sets)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10)).eval()
    x = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8)
    y = net(x.float() / 255).argmax(1)
    return net, x, y


@pytest.fixture(scope="session")
def real_cifar10(tmp_path_factory) -> Path:
    """The shared JPEG pack converted to the python layout (once per session), or skip."""
    if not PACK.is_file():
        pytest.skip(f"real-data test needs the shared pack at {PACK} (not present on this machine)")
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("cifar10-real")
    subprocess.run(
        [sys.executable, str(SHARED_DATA / "cifar10_from_pack.py"), "--out", str(out)], check=True, capture_output=True
    )
    return out


@pytest.fixture
def one_thread():
    """One torch thread for the test (tiny tensors: threads only add overhead and contention)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
