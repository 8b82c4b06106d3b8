"""The grouped settings layout from the command line: a key of the earlier flat layout fails naming
its new place, and a checkpoint saved with flat settings evaluates with its own settings."""

from __future__ import annotations

from pathlib import Path

import torch

from lightning_modules.cli import run_cli
from lightning_modules.settings import GROUPS
from tests.cli_runs import lightning, tiny_args
from tests.conftest import write_cifar10


def test_a_flat_key_in_a_config_names_its_new_place(tmp_path: Path):
    data = write_cifar10(tmp_path / "data", n_train=8, n_test=8)
    old = tmp_path / "old.yaml"
    old.write_text("model:\n  init_args:\n    ssl_weight: 0.5\n")
    r = lightning("fit", *tiny_args(data, tmp_path / "r", "--config", str(old)), cwd=tmp_path)
    assert r.returncode != 0
    assert "'ssl_weight' is now ssl.weight: write `init_args: {ssl: {weight: ...}}`" in r.stderr


def test_a_checkpoint_of_the_flat_layout_keeps_its_settings(tmp_path: Path):
    data = write_cifar10(tmp_path / "data", n_train=16, n_test=8)
    root = tmp_path / "run"
    cli = run_cli(["fit", *tiny_args(data, root, "--trainer.max_steps", "1", "--model.init_args.attack.eps", "0.02")])
    ckpt = root / "checkpoints" / "tiny" / "last.ckpt"
    ck = torch.load(ckpt, weights_only=True)
    hp = ck["hyper_parameters"]
    flat = {k: v for k, v in hp.items() if k not in GROUPS}
    flat.update({"eps": 0.02, "training": "standard", "ssl_weight": 0.25, "predict_attack_steps": 2, "warmup": 0.3})
    ck["hyper_parameters"] = flat
    old = tmp_path / "old.ckpt"
    torch.save(ck, old)
    cli = run_cli(["test", *tiny_args(data, root, "--ckpt_path", str(old))])
    m = cli.model
    assert (m.attack_cfg.eps, m.ssl_cfg.weight, m.inference_cfg.predict_attack_steps, m.optim_cfg.warmup) == (
        0.02,
        0.25,
        2,
        0.3,
    )
