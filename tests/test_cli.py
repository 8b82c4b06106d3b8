"""The CLI end to end on tiny data: fit -> test -> predict, configs, re-runs, the console script."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_modules.cli import run_cli

REPO = Path(__file__).resolve().parent.parent
# every experiment file (data blocks such as data.yaml / data_c.yaml are included by them, not run alone)
EXPERIMENTS = sorted(
    p for p in (REPO / "experiments").rglob("*.yaml") if p.name != "base.yaml" and not p.name.startswith("data")
)


def tiny_args(data_dir, root, *extra):
    """Overrides that make an experiment run in seconds on tiny data, writing under ``root``."""
    callbacks = root / "callbacks.yaml"
    callbacks.write_text(
        "trainer:\n  callbacks:\n"
        "    - class_path: callbacks.AtomicCheckpoint\n"
        f"      init_args: {{dirpath: {root / 'ckpt'}, save_last: true}}\n"
        "    - class_path: callbacks.ImageGrid\n      init_args: {n_images: 4, every_n_epochs: 1}\n"
        "    - class_path: callbacks.PredictionWriter\n"
        f"      init_args: {{output_dir: {root / 'preds'}}}\n"
    )
    return [
        "--config",
        str(REPO / "experiments/cifar10/pgd_at.yaml"),
        "--config",
        str(callbacks),
        "--data.init_args.data_dir",
        str(data_dir),
        "--data.init_args.strict_counts",
        "false",
        "--data.init_args.batch_size",
        "16",
        "--data.init_args.eval_batch_size",
        "20",
        "--model.init_args.backbone",
        "small_cnn",
        "--model.init_args.backbone_kwargs",
        "{width: 8}",
        "--model.init_args.attack.steps",
        "2",
        "--model.init_args.inference.val_attack_steps",
        "2",
        "--model.init_args.inference.predict_attack_steps",
        "2",
        "--model.init_args.reversal",
        "{steps: 2, n_views: 2}",
        "--trainer.default_root_dir",
        str(root),
        "--trainer.logger.init_args.save_dir",
        str(root),
        *extra,
    ]


def test_fit_test_predict_end_to_end(tiny_cifar10, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli(["fit", *tiny_args(tiny_cifar10, tmp_path, "--trainer.fast_dev_run", "2")])
    assert cli.trainer.global_step == 2 and torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    assert "val/pgd_acc" in cli.trainer.callback_metrics
    # a short real fit writes checkpoints (atomically) that test and predict load
    cli = run_cli(["fit", *tiny_args(tiny_cifar10, tmp_path, "--trainer.max_epochs", "1")])
    last = tmp_path / "ckpt" / "last.ckpt"
    assert last.is_file() and cli.trainer.global_step == 6  # 100 images / 16 per batch, drop_last
    assert not list((tmp_path / "ckpt").glob("*.tmp*"))
    assert list(tmp_path.rglob("images/reversal_epoch000.png"))  # the image-grid callback (CSV logger: PNG)
    cli = run_cli(["test", *tiny_args(tiny_cifar10, tmp_path, "--ckpt_path", str(last))])
    assert any(k.startswith("test/") for k in cli.trainer.callback_metrics)
    out = tmp_path / "preds"
    run_cli(["predict", *tiny_args(tiny_cifar10, tmp_path, "--ckpt_path", str(last))])
    p = torch.load(out / "predictions.pt", weights_only=True)
    assert torch.equal(p["idx"], torch.arange(40)) and p["x_reversed"].shape == (40, 3, 32, 32)
    assert (p["x_reversed"] - p["x_input"]).abs().amax() <= 16 / 255 + 1e-6
    assert {"pred_clean", "pred_before", "pred_after", "y"} <= set(p)
    # re-running into the same log dir does not crash
    run_cli(["fit", *tiny_args(tiny_cifar10, tmp_path, "--trainer.fast_dev_run", "1")])


@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: str(p.relative_to(REPO / "experiments")))
def test_every_experiment_config_parses(config, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sub = "test" if "eval" in config.name or "corruption" in config.name else "fit"
    with pytest.raises(SystemExit) as e:  # --print_config prints the composed config and exits 0
        run_cli([sub, "--config", str(config), "--print_config"])
    out = capsys.readouterr()
    assert e.value.code in (0, None), out.err[-2000:]
    assert "inference_mode: false" in out.out  # the base trainer file composed in
    assert "class_path: " in out.out


def test_console_script_reports_bad_config_key(tmp_path):
    exe = Path(sys.executable).with_name("lightning")
    r = subprocess.run(
        [
            str(exe),
            "fit",
            "--config",
            str(REPO / "experiments/cifar10/pgd_at.yaml"),
            "--model.init_args.no_such_key",
            "1",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert r.returncode != 0 and "no_such_key" in r.stderr
