"""Sizes of the array DataModules: counts beyond the data are clamped in one printed line, batch sizes
below 1 fail."""

import pytest
import torch

from datamodules import CIFAR10DataModule
from tests.conftest import write_cifar10


def test_counts_beyond_the_data_are_clamped_saying_so(tmp_path, capsys):
    data = write_cifar10(tmp_path / "data", n_train=20, n_test=8)
    dm = CIFAR10DataModule(str(data), strict_counts=False, n_examples=20000, train_subset=500)
    dm.setup(None)
    assert len(dm.splits["test"][0]) == 8 and len(dm.splits["train"][0]) == 20
    err = capsys.readouterr().err
    assert "n_examples=20000 is more than the 8 examples of the test split: using all 8" in err
    assert "train_subset=500 is more than the 20 examples of the training split: using all 20" in err


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"eval_batch_size": 0}, r"eval_batch_size must be >= 1 or null \(= batch_size\), got 0"),
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"n_examples": 0}, "n_examples must be >= 1 or null, got 0"),
    ],
)
def test_sizes_below_one_fail(kw, match):
    with pytest.raises(ValueError, match=match):
        CIFAR10DataModule("data", **kw)


def test_eval_batch_size_defaults_to_batch_size():
    assert CIFAR10DataModule("data", batch_size=7).eval_batch_size == 7


def test_shuffled_test_order_is_a_seeded_permutation_before_the_first_n(tmp_path):
    data = write_cifar10(tmp_path / "data", n_train=16, n_test=40)

    def test_split(**kw):
        dm = CIFAR10DataModule(data_dir=str(data), batch_size=8, strict_counts=False, **kw)
        dm.setup("test")
        return dm.splits["test"]

    x0, y0 = test_split()
    xs, ys = test_split(test_order="shuffled", n_examples=10, seed=3)
    again, _ = test_split(test_order="shuffled", n_examples=10, seed=3)
    other, _ = test_split(test_order="shuffled", n_examples=10, seed=4)
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(3))[:10]
    assert torch.equal(xs, x0[perm]) and torch.equal(ys, y0[perm]) and torch.equal(xs, again)
    assert not torch.equal(xs, x0[:10]) and not torch.equal(xs, other)
    with pytest.raises(ValueError, match="unknown test_order 'random'"):
        CIFAR10DataModule(data_dir=str(data), test_order="random")
