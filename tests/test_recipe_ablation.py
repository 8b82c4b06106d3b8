"""experiments/recipe_ablation.py on a tiny trained model with tiny step counts: every line, the cells'
counts against a manual recount, and the Wilson interval against a hand computation."""

from __future__ import annotations

import math
import re
from pathlib import Path

from experiments import recipe_ablation
from lightning_modules.cli import run_cli
from tests.cli_runs import tiny_args
from tests.conftest import write_cifar10


def test_cells_give_the_wilson_interval_of_a_hand_computation():
    k, n, z = 1, 4, 1.96
    p = k / n
    lo = (p + z * z / (2 * n) - z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n)
    hi = (p + z * z / (2 * n) + z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n)
    cell = recipe_ablation.cell(__import__("torch").tensor([True, False, False, False]))
    assert cell == f"25.0% [{100 * lo:.1f}, {100 * hi:.1f}] n=4"


def test_ablation_script_runs_every_line(tmp_path: Path):
    data = write_cifar10(tmp_path / "data", n_train=16, n_test=8)
    root = tmp_path / "run"
    run_cli(["fit", *tiny_args(data, root, "--trainer.max_steps", "2")])
    ckpt = root / "checkpoints" / "tiny" / "last.ckpt"
    rows = recipe_ablation.main(
        ["--ckpt", str(ckpt), "--data-dir", str(data), "--n", "8", "--batch", "4", "--draws", "2"]
        + ["--attack-steps", "2", "--reversal-steps", "1", "--ablate", "--not-strict"]
    )
    names = [r["reversal"] for r in rows]
    assert names[:3] == ["without", "package", "mao2021"]
    assert names[3:] == [f"mao2021 without {k}" for k in recipe_ablation.ABLATIONS]
    for r in rows:
        for key in ("clean_mean", "attacked_mean", "clean_all_draws", "attacked_all_draws"):
            pct, n = re.match(r"([\d.]+)% \[[\d.]+, [\d.]+\] n=(\d+)", r[key]).groups()
            assert int(n) == (16 if key.endswith("mean") and r["reversal"] != "without" else 8)
            assert 0 <= float(pct) <= 100
