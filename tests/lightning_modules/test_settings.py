"""The module's grouped settings: ranges checked naming the setting, budgets read from ``8/255``, every
group (reversal and ASCL too) built by ``build_group``, and groups stored as plain types."""

import dataclasses

import lightning
import pytest
import torch

from lightning_modules import ReversalModule
from lightning_modules.defense import ReversalConfig
from lightning_modules.methods.ascl import ASCLConfig
from lightning_modules.settings import GROUPS, AttackConfig, InferenceConfig, OptimConfig, SSLConfig, build_group

VERSION = {"pytorch-lightning_version": lightning.__version__}


@pytest.mark.parametrize(
    "cls,name,value",
    [
        (AttackConfig, "steps", -3),
        (AttackConfig, "alpha", 0),
        (AttackConfig, "noise_std", -0.1),
        (InferenceConfig, "predict_attack_steps", 0),
        (InferenceConfig, "val_attack_steps", -1),
        (SSLConfig, "n_views", 1),
        (SSLConfig, "fraction", 0.0),
        (SSLConfig, "fraction", 1.5),
        (SSLConfig, "weight", -1),
        (OptimConfig, "lr", 0),
        (OptimConfig, "warmup", 1.0),
        (OptimConfig, "momentum", 1.0),
    ],
)
def test_out_of_range_fails_naming_group_and_setting(cls, name, value):
    group = {v: k for k, v in GROUPS.items()}[cls]
    with pytest.raises(ValueError, match=rf"{group}\.{name} must be .*, got {value}"):
        cls(**{name: value})


def test_unknown_names_fail_listing_the_choices():
    with pytest.raises(ValueError, match="standard"):
        AttackConfig(mode="pgd_at")
    with pytest.raises(ValueError, match="kornia"):
        SSLConfig(views="fastest")
    with pytest.raises(ValueError, match="onecycle"):
        OptimConfig(schedule="linear")
    with pytest.raises(ValueError, match=r"unknown attack setting\(s\) \['epsilon'\]; attack has: mode, eps"):
        build_group("attack", {"epsilon": 0.1})
    with pytest.raises(ValueError, match="noise_std"):
        AttackConfig(mode="pgd", noise_std=0.1)


def test_budgets_read_fractions_and_every_group_builds_the_same_way():
    assert AttackConfig(eps="8/255", alpha="2/255") == AttackConfig(eps=8 / 255, alpha=2 / 255)
    assert isinstance(AttackConfig(eps="8/255").eps, float)
    assert ReversalConfig(eps="16/255", alpha="1/255").eps == ReversalConfig(eps=16 / 255).eps == 16 / 255
    with pytest.raises(ValueError, match="cannot read the budget '8//255'"):
        AttackConfig(eps="8//255")
    with pytest.raises(ValueError, match=r"eps=31\.0 is larger"):
        AttackConfig(eps="31")
    assert build_group("reversal", {"steps": 3}) == ReversalConfig(steps=3)
    assert build_group("ascl", None) == ASCLConfig() and build_group("ascl", {"weight": 0.5}).weight == 0.5
    with pytest.raises(ValueError, match=r"unknown reversal setting\(s\) \['stepz'\]"):
        build_group("reversal", {"stepz": 3})
    with pytest.raises(ValueError, match=r"unknown ascl\.selection 'paper'; choose one of \['none', 'leaked'\]"):
        build_group("ascl", {"selection": "paper"})
    with pytest.raises(ValueError, match=r"reversal\.n_views must be >= 2"):
        ReversalConfig(n_views=1)
    m = ReversalModule(
        backbone="small_cnn", backbone_kwargs={"width": 4}, attack={"eps": "4/255"}, reversal={"eps": "8/255"}
    )
    assert m.hparams["attack"]["eps"] == 4 / 255 and m.hparams["reversal"]["eps"] == 8 / 255  # stored as floats


def test_groups_are_stored_as_plain_dicts_and_a_checkpoint_round_trips(tmp_path):
    m = ReversalModule(
        backbone="small_cnn",
        backbone_kwargs={"width": 4},
        attack=AttackConfig(mode="pgd", steps=3),
        ssl={"weight": 0.5, "fraction": 0.5},
    )
    assert m.hparams["attack"] == dataclasses.asdict(m.attack_cfg) and isinstance(m.hparams["ssl"], dict)
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams), **VERSION}, path)
    back = ReversalModule.load_from_checkpoint(path, weights_only=True)
    assert back.attack_cfg == m.attack_cfg and back.ssl_cfg == m.ssl_cfg


def test_ssl_fraction_feeds_the_first_images_only(monkeypatch):
    m = ReversalModule(backbone="small_cnn", backbone_kwargs={"width": 4}, ssl={"weight": 1.0, "fraction": 0.25})
    seen = []
    monkeypatch.setattr(m, "ssl_loss", lambda x: seen.append(len(x)) or x.new_zeros(()))
    monkeypatch.setattr(m, "log", lambda *a, **k: None)
    m.training_step((torch.rand(16, 3, 32, 32), torch.arange(16) % 10, torch.arange(16)), 0)
    assert seen == [4]
