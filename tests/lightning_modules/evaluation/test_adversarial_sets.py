"""Crafting stored adversarial sets: the attack's output is stored exactly and reproducibly, bad
requests are refused, and the command line attacks a CIFAR test set against a checkpoint."""

from __future__ import annotations

import pytest
import torch

from datamodules.adversarial import load_adversarial_set
from lightning_modules.attacks.core import pgd
from lightning_modules.evaluation.adversarial_sets import main, make_adversarial_set

PGD = dict(attack="pgd", eps=8 / 255, alpha=2 / 255, steps=5, source_model="linear", seed=3, batch_size=8)


def test_attack_is_stored_exactly_and_reproducibly(tmp_path, linear_model_set):
    net, x, y = linear_model_set
    path = tmp_path / "adv.pt"
    state = torch.random.get_rng_state()
    meta = make_adversarial_set(net, x, y, path, dataset="synthetic", **PGD)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched
    assert meta["clean_acc"] == 1.0 and meta["adv_acc"] < 1.0 and meta["n"] == 20 and meta["format"] == 1
    obj = load_adversarial_set(path)
    xa = obj["x_adv"]
    assert xa.dtype == torch.float32 and xa.shape == x.shape
    assert (xa - x.float() / 255).abs().max() <= 8 / 255 + 1e-6
    assert torch.equal(obj["x_clean"], x) and torch.equal(obj["y"], y) and torch.equal(obj["idx"], torch.arange(20))
    # same seed -> the same file content; the stored images are the attack's output itself (no rounding)
    torch.manual_seed(3)
    ref = torch.cat([pgd(net, x[i : i + 8].float() / 255, y[i : i + 8], 8 / 255, 2 / 255, 5) for i in range(0, 20, 8)])
    assert torch.equal(xa, ref)
    make_adversarial_set(net, x, y, tmp_path / "again.pt", dataset="synthetic", **PGD)
    assert torch.equal(load_adversarial_set(tmp_path / "again.pt")["x_adv"], xa)


def test_bad_requests_are_refused(tmp_path, linear_model_set):
    net, x, y = linear_model_set
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
    assert not (tmp_path / "a.pt").exists()


def test_cli_against_a_checkpoint(tiny_cifar10, tmp_path):
    from lightning_modules.nn.backbones import build_backbone

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


def test_cli_rebuilds_the_checkpoints_width(tiny_cifar10, tmp_path):
    """A Lightning checkpoint of a non-default width: the source model is built from its hyperparameters."""
    import lightning.pytorch as pl

    from lightning_modules import ReversalModule

    m = ReversalModule(backbone="small_cnn", backbone_kwargs={"width": 4}, head_hidden=16, head_dim=8)
    ckpt = tmp_path / "w4.ckpt"
    hp = {"backbone": "small_cnn", "backbone_kwargs": {"width": 4}, "head_hidden": 16, "head_dim": 8}
    torch.save(
        {"state_dict": m.state_dict(), "hyper_parameters": hp, "pytorch-lightning_version": pl.__version__}, ckpt
    )
    out = tmp_path / "adv.pt"
    args = ["--data-dir", str(tiny_cifar10), "--out", str(out), "--checkpoint", str(ckpt)]
    main([*args, "--steps", "1", "--n-examples", "8", "--device", "cpu"])
    assert load_adversarial_set(out, expect={"n": 8})["x_adv"].shape == (8, 3, 32, 32)
    with pytest.raises(SystemExit):
        main([*args, "--backbone", "preact_resnet18", "--n-examples", "8"])
