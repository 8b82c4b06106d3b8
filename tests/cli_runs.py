"""Helpers for tests that run the ``lightning`` console script: tiny-model arguments, a subprocess
runner and a metrics.csv reader (used by the checkpoint, bad-input, safety and DDP tests)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
LIGHTNING = Path(sys.executable).with_name("lightning")


def tiny_args(data_dir: Path, root: Path, *extra: str, callbacks: Optional[str] = None) -> list[str]:
    """CLI arguments for a tiny small_cnn on ``data_dir``, writing logs / checkpoints / predictions
    under ``root``. ``callbacks`` (YAML list items) replaces the base file's callbacks."""
    root.mkdir(parents=True, exist_ok=True)
    cb = (
        callbacks
        if callbacks is not None
        else (
            "    - class_path: callbacks.AtomicCheckpoint\n      init_args: {save_last: true}\n"
            "    - class_path: callbacks.PredictionWriter\n"
            f"      init_args: {{output_dir: {root / 'preds'}}}\n"
        )
    )
    cfg = root / "tiny.yaml"
    cfg.write_text("trainer:\n  callbacks:\n" + cb)
    return [
        "--config",
        str(cfg),
        "--model.class_path",
        "lightning_modules.ReversalModule",
        "--model.init_args.backbone",
        "small_cnn",
        "--model.init_args.backbone_kwargs",
        "{width: 4}",
        "--model.init_args.head_hidden",
        "16",
        "--model.init_args.head_dim",
        "8",
        "--model.init_args.inference.val_attack_steps",
        "0",
        "--model.init_args.optim.schedule",
        "constant",
        "--model.init_args.optim.lr",
        "0.05",
        "--data.class_path",
        "datamodules.CIFAR10DataModule",
        "--data.init_args.data_dir",
        str(data_dir),
        "--data.init_args.strict_counts",
        "false",
        "--data.init_args.batch_size",
        "4",
        "--data.init_args.eval_batch_size",
        "8",
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "1",
        "--trainer.log_every_n_steps",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.default_root_dir",
        str(root),
        "--trainer.logger.init_args.save_dir",
        str(root),
        *extra,
    ]


def env(**more: str) -> dict[str, str]:
    """The environment for CLI subprocesses: CSV logging, one thread per process, the repo (and
    any ``PYTHONPATH`` given) importable."""
    e = dict(os.environ)
    paths = [more.pop("PYTHONPATH", ""), str(REPO), e.get("PYTHONPATH", "")]
    e.update(
        WANDB_MODE="disabled",
        WANDB_SILENT="true",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join(p for p in paths if p),
    )
    e.update(more)
    return e


def lightning(*args: str, cwd: Path, **env_more: str) -> subprocess.CompletedProcess:
    """Run the ``lightning`` console script; returns the completed process (stdout + stderr as text). No
    wall-clock limit: the runs are bounded by their step counts (pytest-timeout guards against a hang)."""
    return subprocess.run([str(LIGHTNING), *args], cwd=cwd, env=env(**env_more), capture_output=True, text=True)


def popen_lightning(*args: str, cwd: Path, log: Path, **env_more: str) -> subprocess.Popen:
    """Start the console script in the background, output to ``log``."""
    f = open(log, "w")
    return subprocess.Popen([str(LIGHTNING), *args], cwd=cwd, env=env(**env_more), stdout=f, stderr=subprocess.STDOUT)


def read_metrics(root: Path) -> list[dict[str, str]]:
    """Rows of the newest CSV-logger ``metrics.csv`` under ``root``."""
    files = sorted(root.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    assert files, f"no metrics.csv under {root}"
    with open(files[-1]) as f:
        return list(csv.DictReader(f))


def metric_values(rows: list[dict[str, str]], key: str) -> list[tuple[int, float]]:
    """``(step, value)`` of every row that logged ``key``."""
    return [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
