"""The mao2021 reference recipe end to end through the CLI: a tiny fit with its head settings, then
``lightning test`` with the evaluation profile experiments/cifar10/eval_mao2021.yaml (its callback
block as written, with tiny step counts)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from lightning_modules.cli import run_cli
from tests.cli_runs import REPO, tiny_args
from tests.conftest import write_cifar10


def test_eval_mao2021_profile_runs_end_to_end(tmp_path: Path):
    data = write_cifar10(tmp_path / "data", n_train=16, n_test=8)
    root = tmp_path / "run"
    run_cli(["fit", *tiny_args(data, root, "--trainer.max_steps", "2", "--model.init_args.optim.optimizer", "adam")])
    ckpt = root / "checkpoints" / "tiny" / "last.ckpt"
    profile = yaml.safe_load((REPO / "experiments/cifar10/eval_mao2021.yaml").read_text())
    (cb,) = profile["trainer"]["callbacks+"]
    args = cb["init_args"]
    reversal = profile["model"]["init_args"]["reversal"]
    assert reversal == {"recipe": "mao2021"} and args["config"]["scoring"]["draws"] == 1
    args["output_dir"] = str(tmp_path / "eval")
    assert args["config"]["attacks"] == ["pgd", "apgd_fab"]  # their "AutoAttack": APGD-CE + FAB, 2 restarts
    assert profile["data"]["init_args"]["test_order"] == "shuffled"
    args["config"]["attack"]["steps"] = 2
    args["config"]["progress"] = False
    flags = ["--ckpt_path", str(ckpt), "--model.init_args.reversal", json.dumps({**reversal, "steps": 2})]
    cli = run_cli(["test", *tiny_args(data, root, *flags, callbacks="    - " + json.dumps(cb) + "\n")])
    (ev,) = [c for c in cli.trainer.callbacks if type(c).__name__ == "RobustEvaluation"]
    cfg = ev.evaluator.defense.cfg
    assert (cfg.recipe, cfg.shared_views, cfg.positive, cfg.steps) == ("mao2021", True, "first", 2)
    l2 = ev.evaluator.defense.for_threat("L2", 0.5).cfg
    assert l2.norm == "L2" and abs(l2.eps - 1.0) < 1e-9
    rows = json.loads((tmp_path / "eval" / "robustness.json").read_text())
    assert "L2" in json.dumps(rows) and "Linf" in json.dumps(rows) and "APGD-CE + FAB" in json.dumps(rows)
