"""Stored adversarial sets: round trip, metadata matching, refusal of mismatched or malformed files."""

from __future__ import annotations

import pickle

import pytest
import torch

from datamodules import AdversarialSetDataModule, DataFileError, make_adversarial_set
from datamodules.adversarial import AdversarialSetMismatch, load_adversarial_set, main
from lightning_modules.attacks import pgd


@pytest.fixture(scope="module")
def setup_model():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10)).eval()
    x = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8)
    y = net(x.float() / 255).argmax(1)  # the model is right on every clean example
    return net, x, y


def test_round_trip_and_attack_is_stored_exactly(tmp_path, setup_model):
    net, x, y = setup_model
    path = tmp_path / "adv.pt"
    state = torch.random.get_rng_state()
    meta = make_adversarial_set(
        net,
        x,
        y,
        path,
        attack="pgd",
        eps=8 / 255,
        alpha=2 / 255,
        steps=5,
        source_model="linear",
        seed=3,
        batch_size=8,
        dataset="synthetic",
    )
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched
    assert meta["clean_acc"] == 1.0 and meta["adv_acc"] < 1.0 and meta["n"] == 20
    obj = load_adversarial_set(path)
    xa = obj["x_adv"]
    assert xa.dtype == torch.float32 and xa.shape == x.shape
    assert (xa - x.float() / 255).abs().max() <= 8 / 255 + 1e-6
    assert torch.equal(obj["x_clean"], x) and torch.equal(obj["y"], y) and torch.equal(obj["idx"], torch.arange(20))
    # same seed -> the same file content; the stored images are the attack's output itself (no rounding)
    torch.manual_seed(3)
    ref = torch.cat([pgd(net, x[i : i + 8].float() / 255, y[i : i + 8], 8 / 255, 2 / 255, 5) for i in range(0, 20, 8)])
    assert torch.equal(xa, ref)
    make_adversarial_set(
        net,
        x,
        y,
        tmp_path / "again.pt",
        attack="pgd",
        eps=8 / 255,
        alpha=2 / 255,
        steps=5,
        source_model="linear",
        seed=3,
        batch_size=8,
        dataset="synthetic",
    )
    assert torch.equal(load_adversarial_set(tmp_path / "again.pt")["x_adv"], xa)
    # the data module serves (x float32, y, idx) batches
    dm = AdversarialSetDataModule(
        str(path),
        expect={"attack": "pgd", "eps": 0.03137254901960784, "steps": 5, "source_model": "linear", "seed": 3},
        eval_batch_size=6,
    )
    dm.setup("test")
    batches = list(dm.test_dataloader())
    assert len(batches) == 4 and batches[0][0].dtype == torch.float32
    assert torch.equal(torch.cat([b[0] for b in batches]), xa) and torch.equal(
        torch.cat([b[2] for b in batches]), torch.arange(20)
    )
    clean = AdversarialSetDataModule(str(path), images="clean", n_examples=5)
    clean.setup("test")
    assert torch.equal(next(iter(clean.test_dataloader()))[0], x[:5])


def test_metadata_mismatch_is_refused_listing_every_key(tmp_path, setup_model):
    net, x, y = setup_model
    path = tmp_path / "adv.pt"
    make_adversarial_set(net, x, y, path, attack="fgsm", eps=4 / 255, source_model="linear", seed=0)
    with pytest.raises(AdversarialSetMismatch) as e:
        AdversarialSetDataModule(
            str(path), expect={"attack": "pgd", "eps": 8 / 255, "source_model": "linear", "threat": "L2"}
        ).setup("test")
    msg = str(e.value)
    assert "attack: expected 'pgd', file has 'fgsm'" in msg and "eps: expected" in msg
    assert "threat: expected 'L2', file has no such key" in msg and "source_model" not in msg
    AdversarialSetDataModule(str(path), expect={"attack": "fgsm", "eps": 4 / 255}).setup("test")


def test_bad_requests_and_files(tmp_path, setup_model):
    net, x, y = setup_model
    with pytest.raises(ValueError, match="source_model"):
        make_adversarial_set(net, x, y, tmp_path / "a.pt")
    with pytest.raises(ValueError, match="unknown attack"):
        make_adversarial_set(net, x, y, tmp_path / "a.pt", attack="cw2", source_model="m")
    with pytest.raises(ValueError, match="eval mode"):
        make_adversarial_set(
            torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 10)), x, y, tmp_path / "a.pt", source_model="m"
        )
    with pytest.raises(ValueError, match="eps"):
        make_adversarial_set(net, x, y, tmp_path / "a.pt", eps=8, source_model="m")
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
    good = tmp_path / "good.pt"
    make_adversarial_set(net, x, y, good, attack="fgsm_rs", source_model="m")
    with pytest.raises(ValueError, match="test set"):
        AdversarialSetDataModule(str(good)).setup("fit")
    with pytest.raises(DataFileError, match="n_examples=50"):
        AdversarialSetDataModule(str(good), n_examples=50).setup("test")


def test_cli_against_a_checkpoint(tiny_cifar10, tmp_path):
    from lightning_modules.backbones import build_backbone

    net = build_backbone("small_cnn", num_classes=10)
    ckpt = tmp_path / "w.pt"
    torch.save(net.state_dict(), ckpt)
    out = tmp_path / "adv.pt"
    main(
        [
            "--data-dir",
            str(tiny_cifar10),
            "--out",
            str(out),
            "--backbone",
            "small_cnn",
            "--checkpoint",
            str(ckpt),
            "--steps",
            "2",
            "--n-examples",
            "12",
            "--eps",
            "4/255",
            "--device",
            "cpu",
        ]
    )
    obj = load_adversarial_set(out, expect={"eps": 4 / 255, "attack": "pgd", "steps": 2, "n": 12})
    assert obj["meta"]["source_model"] == "small_cnn:w.pt" and obj["x_adv"].shape == (12, 3, 32, 32)
