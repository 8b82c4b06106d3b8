"""Reading stored adversarial sets: the DataModule serves what was stored, metadata matching, refusal
of mismatched or malformed files. The files are crafted with
lightning_modules.evaluation.adversarial_sets (its own tests: tests/lightning_modules/evaluation/)."""

from __future__ import annotations

import pickle

import pytest
import torch

from datamodules import AdversarialSetDataModule, DataFileError
from datamodules.adversarial import AdversarialSetMismatch, load_adversarial_set
from lightning_modules.evaluation.adversarial_sets import make_adversarial_set

S8 = (3, 8, 8)  # the images of linear_model_set


def test_data_module_serves_the_stored_set(tmp_path, linear_model_set):
    net, x, y = linear_model_set
    path = tmp_path / "adv.pt"
    make_adversarial_set(net, x, y, path, attack="pgd", eps=8 / 255, steps=5, source_model="linear", seed=3)
    xa = load_adversarial_set(path)["x_adv"]
    dm = AdversarialSetDataModule(
        str(path),
        expect={"attack": "pgd", "eps": 0.03137254901960784, "steps": 5, "source_model": "linear", "seed": 3},
        eval_batch_size=6,
        image_shape=S8,
    )
    dm.setup("test")
    batches = list(dm.test_dataloader())
    assert len(batches) == 4 and batches[0][0].dtype == torch.float32
    assert torch.equal(torch.cat([b[0] for b in batches]), xa) and torch.equal(
        torch.cat([b[2] for b in batches]), torch.arange(20)
    )
    assert dm.meta["source_model"] == "linear"
    clean = AdversarialSetDataModule(str(path), images="clean", n_examples=5, image_shape=S8)
    clean.setup("test")
    assert torch.equal(next(iter(clean.test_dataloader()))[0], x[:5])


def test_metadata_mismatch_is_refused_listing_every_key(tmp_path, linear_model_set):
    net, x, y = linear_model_set
    path = tmp_path / "adv.pt"
    make_adversarial_set(net, x, y, path, attack="fgsm", eps=4 / 255, source_model="linear", seed=0)
    with pytest.raises(AdversarialSetMismatch) as e:
        AdversarialSetDataModule(
            str(path),
            expect={"attack": "pgd", "eps": 8 / 255, "source_model": "linear", "threat": "L2"},
            image_shape=S8,
        ).setup("test")
    msg = str(e.value)
    assert "attack: expected 'pgd', file has 'fgsm'" in msg and "eps: expected" in msg
    assert "threat: expected 'L2', file has no such key" in msg and "source_model" not in msg
    AdversarialSetDataModule(str(path), expect={"attack": "fgsm", "eps": 4 / 255}, image_shape=S8).setup("test")


def test_bad_files_and_requests(tmp_path, linear_model_set):
    with pytest.raises(DataFileError, match="not found"):
        load_adversarial_set(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    torch.save(
        {
            "x_adv": torch.rand(3, 3, 8, 8) * 2,
            "y": torch.zeros(3).long(),
            "idx": torch.arange(3),
            "meta": {"attack": "pgd", "eps": 0.1, "norm": "Linf", "source_model": "m", "seed": 0, "n": 3},
        },
        bad,
    )
    with pytest.raises(DataFileError, match=r"outside \[0, 1\]"):
        load_adversarial_set(bad)
    torch.save({"x_adv": torch.rand(3, 3, 8, 8), "y": torch.zeros(3).long(), "meta": {}}, bad)
    with pytest.raises(DataFileError, match="missing"):
        load_adversarial_set(bad)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(bad, "wb") as f:
        pickle.dump({"x_adv": Evil()}, f, protocol=2)
    with pytest.raises(DataFileError, match="not a readable"):
        load_adversarial_set(bad)
    net, x, y = linear_model_set
    good = tmp_path / "good.pt"
    make_adversarial_set(net, x, y, good, attack="fgsm_rs", source_model="m", save_clean=False)
    with pytest.raises(ValueError, match="test set"):
        AdversarialSetDataModule(str(good)).setup("fit")
    big = AdversarialSetDataModule(str(good), n_examples=50, image_shape=S8)  # more than it holds: all of it
    big.setup("test")
    assert len(big.splits["test"][1]) == 20
    with pytest.raises(DataFileError, match="no clean images"):
        AdversarialSetDataModule(str(good), images="clean", image_shape=S8).setup("test")


@pytest.mark.parametrize(
    "shape, labels, match",
    [
        (
            (4, 32, 32, 3),
            3,
            r"bad\.pt: images of shape \(32, 32, 3\), expected .*\(channels last\? store \(N, C, H, W\)\)",
        ),
        (
            (4, 1, 32, 32),
            3,
            r"bad\.pt: images of shape \(1, 32, 32\), expected \(C, H, W\) = \(3, 32, 32\) \(3 channels",
        ),
        ((4, 3, 16, 16), 3, r"bad\.pt: images of shape \(3, 16, 16\), expected .*\(3 channels of 32x32\)"),
        ((4, 3, 32, 32), 103, r"bad\.pt: labels from 0 to 103, expected 0\.\.9 \(10 classes\)"),
    ],
    ids=["nhwc", "one_channel", "16x16", "label_103"],
)
def test_sets_that_do_not_fit_the_model_are_refused_naming_the_file(tmp_path, shape, labels, match):
    bad = tmp_path / "bad.pt"
    y = torch.tensor([0, 1, 2, labels])
    meta = {"attack": "pgd", "eps": 0.1, "norm": "Linf", "source_model": "m", "seed": 0, "n": 4}
    torch.save({"x_adv": torch.rand(*shape), "y": y, "idx": torch.arange(4), "meta": meta}, bad)
    with pytest.raises(DataFileError, match=match):
        AdversarialSetDataModule(str(bad)).setup("test")
    meta["image_shape"] = [3, 32, 32]  # recorded, and the stored images differ: named too
    if shape != (4, 3, 32, 32):
        torch.save({"x_adv": torch.rand(*shape), "y": y, "idx": torch.arange(4), "meta": meta}, bad)
        with pytest.raises(DataFileError, match=r"bad\.pt: x_adv holds images of shape .* records image_shape"):
            load_adversarial_set(bad)
