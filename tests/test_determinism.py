"""Same seed -> same metrics and weights on CPU (every random source: shuffles, crops and flips,
SimCLR views, PGD random starts); another seed -> different ones. ``trainer.deterministic: true``
works with our code and changes nothing on CPU. GPU caveats: README, "Reliability"."""

from __future__ import annotations

from pathlib import Path

import torch

from lightning_modules.cli import run_cli
from tests.cli_runs import read_metrics, tiny_args
from tests.conftest import write_cifar10


def fit(data: Path, root: Path, seed: int, *extra: str) -> tuple[list[dict], dict]:
    run_cli(
        [
            "fit",
            *tiny_args(
                data,
                root,
                "--seed_everything",
                str(seed),
                "--trainer.max_epochs",
                "2",
                "--trainer.limit_train_batches",
                "3",
                "--model.init_args.attack.mode",
                "pgd",
                "--model.init_args.attack.steps",
                "2",
                "--model.init_args.inference.val_attack_steps",
                "1",
                "--data.init_args.augment",
                "true",
                *extra,
            ),
        ]
    )
    rows = read_metrics(root)
    state = torch.load(root / "checkpoints" / "tiny" / "last.ckpt", weights_only=True)["state_dict"]
    return rows, state


def test_same_seed_same_metrics_on_cpu(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = write_cifar10(tmp_path / "data", n_train=24, n_test=8, learnable=True)
    a_rows, a_state = fit(data, tmp_path / "a", 0)
    b_rows, b_state = fit(data, tmp_path / "b", 0)
    keys = {"train/loss", "train/loss_ssl", "val/acc", "val/loss_ssl", "val/pgd_acc"}
    assert keys <= set(a_rows[0]) and len(a_rows) >= 6
    assert a_rows == b_rows  # every logged value, every step, bit for bit (as written by the CSV logger)
    assert a_state.keys() == b_state.keys() and all(torch.equal(a_state[k], b_state[k]) for k in a_state)

    c_rows, c_state = fit(data, tmp_path / "c", 1)
    assert c_rows != a_rows and not all(torch.equal(a_state[k], c_state[k]) for k in a_state)

    try:
        d_rows, d_state = fit(data, tmp_path / "d", 0, "--trainer.deterministic", "true")
    finally:
        torch.use_deterministic_algorithms(False)  # the Trainer flag is process-wide
    assert d_rows == a_rows and all(torch.equal(a_state[k], d_state[k]) for k in a_state)
