"""ASCLModule: PGD-AT + the ASCL loss trains, logs the kept fractions, and goes through the CLI and
the robustness evaluation (``make eval-cifar10``) like the other modules."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_modules.cli import run_cli
from lightning_modules.methods.ascl import ASCLConfig, ASCLModule
from lightning_modules.methods.supcon import ascl_loss, select_pairs

SMALL = dict(
    backbone="small_cnn",
    backbone_kwargs={"width": 8},
    head_hidden=32,
    head_dim=16,
    attack=dict(steps=1),
    inference=dict(val_attack_steps=0),
    optim=dict(schedule="constant", lr=0.05),
)
REPO = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.usefixtures("one_thread")


def loader(n: int = 32, batch: int = 16) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 4, (n,), generator=g)
    return DataLoader(TensorDataset(x, y, torch.arange(n)), batch_size=batch)


def fit(m: ASCLModule, steps: int = 2) -> pl.Trainer:
    t = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    t.fit(m, loader())
    return t


def test_ascl_terms_are_the_loss_on_the_attacked_batch(monkeypatch):
    torch.manual_seed(0)
    m = ASCLModule(ascl=ASCLConfig(selection="leaked", proj_hidden=32, proj_dim=8), **SMALL).train()
    x, y = torch.rand(8, 3, 32, 32), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    x_adv = (x + 0.01).clamp(0, 1)
    monkeypatch.setattr(m, "train_inputs", lambda xx, yy: x_adv)
    t = m.ascl_terms(x, y)
    logits, feats = m.classifier(torch.cat([x_adv, x]))
    z = m.ascl_head(feats)
    pred = logits.argmax(1)
    keep = select_pairs(y, pred[:8], pred[8:], "leaked")
    torch.testing.assert_close(t["loss_ascl"], ascl_loss(z[:8], z[8:], y, 0.1, keep))
    torch.testing.assert_close(t["logits_adv"], logits[:8])


@pytest.mark.parametrize("selection", ["none", "leaked"])
def test_ascl_trains_and_logs_kept_fractions(selection):
    torch.manual_seed(0)
    m = ASCLModule(ascl={"selection": selection, "proj_hidden": 32, "proj_dim": 8}, **SMALL, ssl=dict(weight=0.5))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    trainer = fit(m)
    after = m.state_dict()
    for key in ("classifier.net.body.0.weight", "ascl_head.0.weight", "head.0.weight"):
        assert not torch.equal(before[key], after[key]), key
    logged = trainer.callback_metrics
    assert math.isfinite(float(logged["train/loss_ascl"])) and float(logged["train/loss_ascl"]) > 0
    pos, neg = float(logged["train/ascl_pos_kept"]), float(logged["train/ascl_neg_kept"])
    if selection == "none":
        assert pos == 1.0 and neg == 1.0
    else:
        assert 0 < pos <= 1 and 0 <= neg < 1
    assert m.hparams.ascl["selection"] == selection  # plain dict in the checkpoint


def test_ascl_rejects_bad_settings():
    with pytest.raises(ValueError, match="attack.mode must be 'pgd' or 'fgsm_rs'"):
        ASCLModule(**{**SMALL, "attack": dict(mode="standard")})
    with pytest.raises(ValueError, match="selection 'paper'"):
        ASCLConfig(selection="paper")
    with pytest.raises(ValueError, match="temperature"):
        ASCLConfig(temperature=0)


def test_ascl_config_trains_and_the_evaluation_runs_on_it(tiny_cifar10, tmp_path, monkeypatch):
    from tests.callbacks.test_robust_eval import FAST, common, fast_eval

    monkeypatch.chdir(tmp_path)
    small = [
        "--model.init_args.backbone",
        "small_cnn",
        "--model.init_args.backbone_kwargs",
        "{width: 4}",
        "--model.init_args.head_hidden",
        "16",
        "--model.init_args.head_dim",
        "8",
        "--model.init_args.ascl",
        "{proj_hidden: 16, proj_dim: 8}",
        "--model.init_args.attack.steps",
        "1",
        "--model.init_args.inference.val_attack_steps",
        "0",
        "--model.init_args.reversal",
        "{steps: 1, n_views: 2}",
    ]
    cli = run_cli(
        [
            "fit",
            "--config",
            str(REPO / "experiments/cifar10/ascl.yaml"),
            *small,
            "--trainer.fast_dev_run",
            "2",
            "--trainer.callbacks",
            "[]",
            *common(tiny_cifar10, tmp_path),
        ]
    )
    m = cli.model
    assert isinstance(m, ASCLModule) and m.attack_cfg.mode == "pgd"
    assert m.ascl_cfg == ASCLConfig(weight=1.0, temperature=0.1, proj_hidden=16, proj_dim=8, selection="leaked")
    assert cli.trainer.global_step == 2
    ckpt = tmp_path / "ascl.ckpt"
    cli.trainer.save_checkpoint(ckpt)
    out = tmp_path / "eval"
    cli = run_cli(
        [
            "test",
            "--config",
            str(REPO / "experiments/cifar10/eval.yaml"),
            "--ckpt_path",
            str(ckpt),
            *common(tiny_cifar10, tmp_path),
            *fast_eval(out, FAST.replace("pgd, apgd-ce, bpda_eot, apgd_ce_bpda, transfer", "pgd")),
        ]
    )
    assert isinstance(cli.model, ASCLModule)  # rebuilt from the checkpoint's class and settings
    report = json.loads((out / "robustness.json").read_text())
    assert report["clean"]["n"] == 8 and any(r["attack"] == "pgd" for r in report["rows"])
