import pickle

import numpy as np
import pytest
import torch

from datamodules import CIFAR10DataModule, CIFAR100DataModule, DataFileError


def test_splits_val_holdout_and_n_examples(tiny_cifar10):
    dm = CIFAR10DataModule(str(tiny_cifar10), batch_size=16, val_size=20, n_examples=25, strict_counts=False)
    dm.setup("fit")
    xtr, ytr = dm.splits["train"]
    assert xtr.shape == (80, 3, 32, 32) and xtr.dtype == torch.uint8 and len(dm.splits["val"][0]) == 20
    assert "test" not in dm.splits  # with a hold-out, fit needs no test data
    dm.setup("test")
    assert len(dm.splits["test"][0]) == 25
    x, y, idx = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.uint8 and len(dm.train_dataloader()) == 5
    xt, yt, it = next(iter(dm.test_dataloader()))
    assert torch.equal(it, torch.arange(16))  # test order is the file order (first n_examples)
    ref = pickle.load(open(tiny_cifar10 / "cifar-10-batches-py" / "test_batch", "rb"))
    assert torch.equal(xt[0].flatten(), torch.as_tensor(ref["data"][0]))
    assert yt.tolist() == ref["labels"][:16]


def test_strict_counts_and_missing_data_message(tiny_cifar10, tmp_path):
    with pytest.raises(DataFileError, match="expected 50000 images, found 100"):
        dm = CIFAR10DataModule(str(tiny_cifar10))
        dm.setup("fit")
    dm = CIFAR10DataModule(str(tmp_path / "empty"))
    with pytest.raises(DataFileError) as e:
        dm.setup("test")
    msg = str(e.value)
    assert "cifar-10-batches-py" in msg and "download: true" in msg and "cifar10_from_pack.py" in msg


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        CIFAR10DataModule(batch_size=0)
    with pytest.raises(ValueError, match="n_examples"):
        CIFAR10DataModule(n_examples=0)


def test_cifar100_layout(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("test", 10)):
        with open(folder / split, "wb") as f:
            pickle.dump(
                {
                    b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                    b"fine_labels": rng.integers(0, 100, n).tolist(),
                    b"coarse_labels": rng.integers(0, 20, n).tolist(),
                },
                f,
            )
    dm = CIFAR100DataModule(str(tmp_path), batch_size=8, strict_counts=False)
    dm.setup()
    assert len(dm.splits["train"][0]) == 30 and dm.num_classes == 100
    with open(folder / "test", "wb") as f:
        pickle.dump({b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), b"fine_labels": [0, 100, 5]}, f)
    with pytest.raises(DataFileError, match=r"test.*labels out of range \[0, 100\)"):
        CIFAR100DataModule(str(tmp_path), strict_counts=False).setup("test")
