"""`lightning fit` with a smoothing config, then `lightning test --config experiments/cifar10/certify.yaml`:
the report files, and the numbers against direct calls of certify / predict with the same noise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from callbacks.smoothing_report import SmoothingCertification, markdown_table
from lightning_modules.cli import run_cli
from lightning_modules.evaluation.smoothing import SmoothingConfig, certified_accuracy, certify, predict
from tests.callbacks.test_robust_eval import common

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "experiments" / "cifar10"

pytestmark = pytest.mark.usefixtures("one_thread")


def test_train_with_noise_then_certify(tiny_cifar10, tmp_path, monkeypatch):
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
    ]
    cli = run_cli(
        [
            "fit",
            "--config",
            str(CONFIGS / "smoothing_sigma_0.25.yaml"),
            *small,
            "--trainer.fast_dev_run",
            "2",
            "--trainer.callbacks",
            "[]",
            *common(tiny_cifar10, tmp_path),
        ]
    )
    assert cli.model.attack_cfg.noise_std == 0.25 and cli.trainer.global_step == 2
    ckpt = tmp_path / "noise.ckpt"
    cli.trainer.save_checkpoint(ckpt)
    out = tmp_path / "certify"
    cb = "--trainer.callbacks.init_args."
    cli = run_cli(
        [
            "test",
            "--config",
            str(CONFIGS / "certify.yaml"),
            "--ckpt_path",
            str(ckpt),
            *common(tiny_cifar10, tmp_path),
            cb + "output_dir",
            str(out),
            cb + "n0",
            "8",
            cb + "n",
            "64",
            cb + "batch_size",
            "128",
            cb + "alpha",
            "0.05",
        ]
    )
    report = json.loads((out / "certify.json").read_text())
    assert report["settings"]["sigma"] == 0.25 and report["n_examples"] == 8  # sigma from the checkpoint
    assert list(report["certified_accuracy"]) == ["0.0", "0.25", "0.5", "0.75", "1.0"]
    ex = report["per_example"]
    assert ex["idx"] == list(range(8))
    # the first test batch (4 images) again, with the callback's seed: the same certificates
    model = cli.model.eval()
    x, y, _ = next(iter(cli.datamodule.test_dataloader()))
    cfg = SmoothingConfig(sigma=0.25, n0=8, n=64, alpha=0.05, batch_size=128)
    gen = torch.Generator().manual_seed(0)
    pred, radius, _ = certify(model.model_fn, model._prep(x), cfg, 10, gen)
    assert pred.tolist() == ex["pred"][:4]
    torch.testing.assert_close(radius, torch.tensor(ex["radius"][:4]))
    cert = certified_accuracy(
        torch.tensor(ex["pred"]), torch.tensor(ex["radius"]), torch.tensor(ex["y"]), [0, 0.25, 0.5, 0.75, 1.0]
    )
    assert report["certified_accuracy"] == {str(float(k)): v for k, v in cert.items()}
    assert report["abstain"] == sum(p == -1 for p in ex["pred"]) / 8
    assert 0 <= report["predict_accuracy"] <= 1 and report["seconds_per_image"] > 0
    md = (out / "certify.md").read_text()
    assert "| r = 0.0 |" in md and "sigma 0.25" in md
    png = (out / "certified_accuracy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    logged = cli.trainer.callback_metrics
    assert abs(float(logged["test/certified_acc@0.25"]) - cert[0.25]) < 1e-6
    # PREDICT continues the same generator after CERTIFY
    pp = predict(model.model_fn, model._prep(x), cfg, 10, gen)
    assert 0 <= float((pp == y).float().mean()) <= 1


def test_sigma_must_come_from_somewhere():
    from types import SimpleNamespace

    cb = SmoothingCertification()
    with pytest.raises(ValueError, match="sigma is not set"):
        cb.config_for(SimpleNamespace(attack_cfg=SimpleNamespace(noise_std=0.0)))
    assert cb.config_for(SimpleNamespace(attack_cfg=SimpleNamespace(noise_std=0.5))).sigma == 0.5
    with pytest.raises(ValueError, match="sigma"):
        SmoothingCertification(sigma=-1)
    with pytest.raises(ValueError, match="n0=10"):
        SmoothingCertification(sigma=0.25, n0=10, n=5)
    with pytest.raises(ValueError, match="radii"):
        SmoothingCertification(sigma=0.25, radii=(-0.5,))


def test_markdown_and_wandb():
    from types import SimpleNamespace

    report = {
        "settings": {"sigma": 0.5, "n0": 10, "n": 100, "alpha": 0.001},
        "n_examples": 4,
        "certified_accuracy": {"0.0": 0.5, "0.5": 0.25},
        "abstain": 0.25,
        "predict_accuracy": 0.5,
        "predict_abstain": 0.0,
        "seconds_per_image": 0.5,
    }
    assert "| 50.00% | 25.00% | 25.00% | 50.00% | 0.00% | 0.5 |" in markdown_table(report)
    calls = {}

    class WandbLogger:
        def log_table(self, key, columns, data):
            calls["table"] = (key, columns, data)

        def log_image(self, key, images):
            calls["image"] = (key, images)

    SmoothingCertification._log_wandb(SimpleNamespace(loggers=[WandbLogger()]), report, Path("p.png"))
    assert calls["table"] == ("test/certified_accuracy", ["radius", "certified_acc"], [[0.0, 0.5], [0.5, 0.25]])
    assert calls["image"] == ("test/certified_accuracy_plot", ["p.png"])


def test_uint8_images_reach_a_module_without_prep_in_unit_range():
    import lightning.pytorch as pl

    class NoPrep(pl.LightningModule):  # no _prep: the callback converts the pixels itself
        def __init__(self) -> None:
            super().__init__()
            self.classifier = torch.nn.Identity()
            self.classifier.num_classes = 2
            self.seen: list[torch.Tensor] = []

        def model_fn(self, x: torch.Tensor) -> torch.Tensor:
            self.seen.append(x.detach().clone())
            return torch.stack([x.flatten(1).mean(1), 1 - x.flatten(1).mean(1)], 1)

    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3).repeat(2, 3, 3, 1)
    cb = SmoothingCertification(sigma=1e-4, n0=2, n=4, batch_size=8, clamp=False, predict=False)
    module = NoPrep()
    cb.on_test_epoch_start(None, module)
    cb.on_test_batch_end(None, module, None, (x, torch.tensor([0, 1]), torch.tensor([0, 1])), 0)
    unit = x[0].float() / 255  # both images are the same: every noisy copy is close to it
    assert module.seen and all((s - unit).abs().max() < 1e-2 for s in module.seen)


def test_per_example_results_are_kept_once_in_index_order():
    from types import SimpleNamespace

    cb = SmoothingCertification(sigma=0.25)
    cb._res = {"idx": [torch.tensor([3, 1]), torch.tensor([1, 0])], "y": [torch.tensor([7, 5]), torch.tensor([5, 4])]}
    r = cb._gathered(SimpleNamespace(world_size=1), SimpleNamespace(device=torch.device("cpu")))
    assert r["idx"].tolist() == [0, 1, 3] and r["y"].tolist() == [4, 5, 7]
