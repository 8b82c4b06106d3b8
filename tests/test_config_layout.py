"""The grouped settings layout from the command line: a key outside it fails in one line naming the key
and the file, and budgets written ``8/255`` (YAML or flag) build the same settings as the float."""

from __future__ import annotations

from pathlib import Path

from lightning_modules.cli import run_cli
from lightning_modules.settings import AttackConfig
from tests.cli_runs import lightning, tiny_args
from tests.conftest import write_cifar10

ONE_STEP = ("--trainer.fast_dev_run", "1")


def test_a_key_outside_the_groups_fails_in_one_line_naming_it(tmp_path: Path):
    data = write_cifar10(tmp_path / "data", n_train=8, n_test=8)
    old = tmp_path / "old.yaml"
    old.write_text("model:\n  init_args:\n    ssl_weight: 0.5\n")
    r = lightning("fit", *tiny_args(data, tmp_path / "r", "--config", str(old)), cwd=tmp_path)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert "unknown setting model.init_args.ssl_weight" in last and str(old) in last, last


def test_budgets_written_as_fractions_build_the_same_settings(tmp_path: Path):
    data = write_cifar10(tmp_path / "data", n_train=8, n_test=8)
    models = {}
    for name, eps, alpha, rev in (("float", 8 / 255, 2 / 255, 16 / 255), ("fraction", "8/255", "2/255", "16/255")):
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(
            "model:\n  class_path: lightning_modules.ReversalModule\n  init_args:\n"
            f"    attack: {{mode: pgd, eps: {eps}, alpha: {alpha}, steps: 2}}\n"
            f"    reversal: {{eps: {rev}}}\n"
        )
        models[name] = run_cli(["fit", "--config", str(cfg), *tiny_args(data, tmp_path / name, *ONE_STEP)]).model
    a, b = models["float"], models["fraction"]
    assert b.attack_cfg == a.attack_cfg == AttackConfig(mode="pgd", eps=8 / 255, alpha=2 / 255, steps=2)
    assert b.reversal_cfg == a.reversal_cfg and b.reversal_cfg.eps == 16 / 255
    assert isinstance(b.hparams["attack"]["eps"], float) and isinstance(b.hparams["reversal"]["eps"], float)
    flag = run_cli(["fit", *tiny_args(data, tmp_path / "flag", *ONE_STEP, "--model.init_args.attack.eps", "4/255")])
    assert flag.model.attack_cfg.eps == 4 / 255
