"""The module's grouped settings: ranges checked naming the setting, the earlier flat layout translated
(checkpoints) or refused with the new name (configs), and groups stored as plain types."""

import dataclasses

import lightning
import pytest
import torch

from lightning_modules import ReversalModule
from lightning_modules.settings import (
    FLAT_KEYS,
    GROUPS,
    AttackConfig,
    InferenceConfig,
    OptimConfig,
    SSLConfig,
    build_group,
    legacy_hint,
    upgrade_hparams,
)

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


def test_every_flat_key_maps_to_a_field_of_its_group():
    for key, (group, name) in FLAT_KEYS.items():
        assert name in {f.name for f in dataclasses.fields(GROUPS[group])}, key


def test_upgrade_keeps_values_and_leaves_grouped_hparams_alone():
    old = {
        "backbone": "small_cnn",
        "training": "fgsm_rs",
        "eps": 0.02,
        "ssl_weight": 0.3,
        "views_backend": "fast",
        "lr": 0.2,
        "val_attack_steps": 0,
        "compile": False,
        "reversal": {"steps": 3},
    }
    new = upgrade_hparams(old)
    assert new == {
        "backbone": "small_cnn",
        "reversal": {"steps": 3},
        "attack": {"mode": "fgsm_rs", "eps": 0.02},
        "ssl": {"weight": 0.3, "views": "fast"},
        "optim": {"lr": 0.2},
        "inference": {"val_attack_steps": 0},
        "speed": {"compile": False},
    }
    assert upgrade_hparams(new) == new
    m = ReversalModule(**new)
    assert m.attack_cfg.eps == 0.02 and m.ssl_cfg.views == "fast" and m.optim_cfg.lr == 0.2


def test_legacy_hint_names_the_new_place():
    assert "attack.eps" in legacy_hint("Key 'eps' is not expected")
    assert "--model.init_args.optim.lr" in legacy_hint("unrecognized arguments: --model.init_args.lr 0.1")
    assert legacy_hint("Key 'backbone' is not expected") is None


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


def test_an_old_flat_checkpoint_loads_with_its_settings(tmp_path):
    m = ReversalModule(backbone="small_cnn", backbone_kwargs={"width": 4}, attack={"eps": 0.02})
    hp = {k: v for k, v in m.hparams.items() if k not in GROUPS}
    hp.update({"eps": 0.02, "training": "standard"})
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": hp, **VERSION}, path)
    back = ReversalModule.load_from_checkpoint(path, weights_only=True)
    assert back.attack_cfg.eps == 0.02 and back.attack_cfg.mode == "standard"
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in m.state_dict().items())


def test_ssl_fraction_feeds_the_first_images_only(monkeypatch):
    m = ReversalModule(backbone="small_cnn", backbone_kwargs={"width": 4}, ssl={"weight": 1.0, "fraction": 0.25})
    seen = []
    monkeypatch.setattr(m, "ssl_loss", lambda x: seen.append(len(x)) or x.new_zeros(()))
    monkeypatch.setattr(m, "log", lambda *a, **k: None)
    m.training_step((torch.rand(16, 3, 32, 32), torch.arange(16) % 10, torch.arange(16)), 0)
    assert seen == [4]
