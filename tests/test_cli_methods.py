"""The comparison methods train through the CLI: KAP, AdvCL pretraining, then linear probing."""

from __future__ import annotations

from pathlib import Path

import torch

from lightning_modules.cli import run_cli
from lightning_modules.methods.advcl import AdvCLModule, LinearProbeModule
from lightning_modules.nn.kap import KernelAveragePool

CONFIGS = Path(__file__).resolve().parent.parent / "experiments" / "cifar10"


def fit_args(config: str, data_dir: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "fit",
        "--config",
        str(CONFIGS / config),
        "--data.init_args.data_dir",
        str(data_dir),
        "--data.init_args.strict_counts",
        "false",
        "--data.init_args.batch_size",
        "16",
        "--data.init_args.eval_batch_size",
        "16",
        "--data.init_args.n_examples",
        "16",
        "--model.init_args.inference.val_attack_steps",
        "1",
        "--model.init_args.inference.predict_attack_steps",
        "1",
        "--model.init_args.reversal",
        "{steps: 1, n_views: 2}",  # the base image-grid callback runs both
        "--trainer.fast_dev_run",
        "2",
        "--trainer.accelerator",
        "cpu",
        "--trainer.default_root_dir",
        str(tmp_path / "logs"),
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "logs"),
        *extra,
    ]


def test_kap_config_trains(tiny_cifar10, tmp_path):
    # the config's KAP placement (after layer2-4 of a PreActResNet-18), narrowed for speed
    cli = run_cli(
        fit_args(
            "kap.yaml",
            tiny_cifar10,
            tmp_path,
            "--model.init_args.backbone_kwargs",
            '{"width": 8, "kap": {"window": 3, "after": ["layer2", "layer3", "layer4"]}}',
        )
    )
    m = cli.model
    assert m.attack_cfg.noise_std == 0.1 and m.attack_cfg.mode == "standard"
    kaps = sorted(n for n, mod in m.named_modules() if isinstance(mod, KernelAveragePool))
    assert kaps == ["classifier.net.layer2.1", "classifier.net.layer3.1", "classifier.net.layer4.1"]
    assert cli.trainer.global_step == 2 and torch.isfinite(cli.trainer.callback_metrics["train/loss"])


def test_kap_config_declares_kap(tmp_path):
    cli = run_cli(["--config", str(CONFIGS / "kap.yaml")], run=False)
    kap = cli.model.hparams.backbone_kwargs["kap"]
    assert kap == {"window": 3, "after": ["layer2", "layer3", "layer4"], "padding": "zeros"}
    assert sum(isinstance(mod, KernelAveragePool) for mod in cli.model.modules()) == 3


def test_advcl_pretrain_then_linear_probe(tiny_cifar10, tmp_path):
    small = ["--model.init_args.backbone", "small_cnn", "--model.init_args.backbone_kwargs", '{"width": 8}']
    cli = run_cli(
        fit_args("advcl_pretrain.yaml", tiny_cifar10, tmp_path, *small, "--model.init_args.attack.steps", "2")
    )
    pre = cli.model
    assert isinstance(pre, AdvCLModule) and pre.hparams.hf_radius == 8 and pre.ssl_cfg.temperature == 0.5
    assert cli.trainer.global_step == 2 and torch.isfinite(cli.trainer.callback_metrics["train/loss_ssl"])
    ckpt = tmp_path / "advcl.ckpt"
    cli.trainer.save_checkpoint(ckpt)  # fast_dev_run writes no checkpoints itself

    cli = run_cli(
        fit_args(
            "linear_probe.yaml", tiny_cifar10, tmp_path, *small, "--model.init_args.backbone_checkpoint", str(ckpt)
        )
    )
    probe = cli.model
    assert isinstance(probe, LinearProbeModule) and cli.trainer.global_step == 2
    trained = {n for n, p in probe.named_parameters() if p.requires_grad}
    assert trained == {"classifier.net.linear.weight", "classifier.net.linear.bias"}
    pre_sd, probe_sd = pre.state_dict(), probe.state_dict()
    for k, v in pre_sd.items():  # backbone (and BN statistics) and head unchanged by probing
        if not k.startswith("classifier.net.linear"):
            assert torch.equal(v, probe_sd[k]), k
    # the probe is evaluated by the shared test path (attack + reversal)
    out = cli.trainer.test(probe, datamodule=cli.datamodule, verbose=False)[0]
    assert {"test/clean_acc", "test/pgd_acc"} <= set(out)
