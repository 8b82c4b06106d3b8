"""What the stages of ``scripts/gpu_run.py`` share: the :class:`Run` (budgets, results written after every
stage), the trained module and test images, a log tee, subprocesses killed at a budget, tiny synthetic CIFAR-10."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pickle
import platform
import selectors
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from lightning_modules.util import atomic_write_text
from scripts.gpu_results import render

REPO = Path(__file__).resolve().parent.parent


class Run:
    """The stages, their budgets and the results; everything is written to ``out`` after every stage."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.t0 = args, time.monotonic()
        self.deadline = self.t0 + args.total_seconds
        self.results: dict[str, Any] = {"schema": 1, "meta": meta(args), "stages": {}}
        self.ckpt: Optional[Path] = None
        self.module = None
        self.test_split: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # uint8 images, labels (CPU)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def stage(
        self, name: str, budget: float, fn: Callable[[float], Any], reserve: float = 0.0, always: bool = False
    ) -> None:
        """Run ``fn(budget)``, ``budget`` cut to what the deadline leaves after ``reserve`` s (``always``: even past
        it, for the seconds that save the weights and the grid). A returned dict is stored under ``name``
        (``{"cut": True}``: stopped at its budget); an exception fails the stage, the next one still runs."""
        budget = max(budget if always else 0, min(budget, self.left() - reserve))
        rec: dict[str, Any] = {"budget_s": round(budget, 1)}
        self.results["stages"][name] = rec
        t = time.monotonic()
        if budget <= 0:
            rec.update(status="skipped", error="no time left in --total-seconds")
        else:
            print(f"[gpu-run] {name}: budget {budget:.0f} s, {self.left():.0f} s left in the run", flush=True)
            try:
                value = fn(budget)
                rec["status"] = "cut" if isinstance(value, dict) and value.get("cut") else "ok"
                if value is not None:
                    self.results[name] = value
            except Exception as e:
                rec.update(status="failed", error=f"{type(e).__name__}: {e}")
                traceback.print_exc()
        rec["wall_s"] = round(time.monotonic() - t, 1)
        err = f" ({rec['error']})" if rec.get("error") else ""
        print(f"[gpu-run] {name}: {rec['status']} in {rec['wall_s']} s{err}", flush=True)
        self.write()

    def write(self) -> None:
        self.results["meta"]["wall_s"] = round(time.monotonic() - self.t0, 1)
        atomic_write_text(self.args.out / "results.json", json.dumps(self.results, indent=2, default=str))
        atomic_write_text(self.args.out / "results.md", render(self.results) + "\n")


def meta(args: argparse.Namespace) -> dict[str, Any]:
    def git(*cmd: str) -> Optional[str]:
        try:
            return subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    cuda = args.device == "cuda" and torch.cuda.is_available()
    stamp = Path(args.wheels) / "COMMIT"  # the machine's copy of the tree may have no .git: make device-wheels
    commit = git("rev-parse", "--short=12", "HEAD") or (stamp.read_text().strip() if stamp.is_file() else None)
    return {
        "device": args.device,
        "tiny": args.tiny,
        "quick_attacks": args.quick_attacks,
        "tf32_convolutions": cuda and torch.backends.cudnn.allow_tf32,  # "fp32" attacks' convolutions
        "device_name": torch.cuda.get_device_name() if cuda else f"CPU {platform.machine()} ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "dirty": bool(git("status", "--porcelain")) if git("rev-parse", "HEAD") else None,
        "command": "make gpu-run" + (" DEVICE=cpu TINY=1" if args.tiny else ""),
        "argv": sys.argv[1:],
    }


def load_module(run: Run):
    """The trained ReversalModule, from the checkpoint's hyperparameters (weights_only, fp32, eval mode)."""
    from lightning_modules import ReversalModule

    if run.module is None:
        if run.ckpt is None:
            raise RuntimeError("no trained checkpoint: the train stage failed")
        ck = torch.load(run.ckpt, map_location="cpu", weights_only=True)
        hp = run.hparams = {k: v for k, v in ck["hyper_parameters"].items() if not k.startswith("_")}  # _class_path
        m = ReversalModule(**{**hp, "speed": {**(hp.get("speed") or {}), "compile": False}})
        m.load_state_dict(ck["state_dict"])
        run.module = m.to(run.args.device).eval()
    return run.module


def test_images(run: Run, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` test images in ``[0, 1]`` and their labels on the run's device (the split is read once)."""
    import numpy as np

    from datamodules.cifar import CIFAR10DataModule

    if run.test_split is None:
        dm = CIFAR10DataModule(data_dir=run.results["setup"]["data_dir"], strict_counts=not run.args.tiny)
        x, y = dm.load_split("test")
        run.test_split = torch.as_tensor(np.asarray(x)), torch.as_tensor(np.asarray(y)).long()
    x, y = run.test_split
    return x[:n].to(run.args.device).float().div_(255), y[:n].to(run.args.device)


class Tee:
    """Writes to the terminal and to the run's log file."""

    def __init__(self, stream, path: Path) -> None:
        self.stream, self.file = stream, open(path, "a", buffering=1)

    def write(self, s: str) -> int:
        self.stream.write(s)
        self.file.write(s)
        return len(s)

    def flush(self) -> None:
        self.stream.flush()
        self.file.flush()


def run_logged(cmd: list[str], timeout: float, env: Optional[dict] = None) -> tuple[int, str, bool]:
    """Run ``cmd``, echo its output, kill it after ``timeout`` s; returns (returncode, output, cut)."""
    print("[gpu-run] $ " + " ".join(cmd), flush=True)
    env = {**os.environ, **(env or {})}
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    lines: list[str] = []
    end = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    while not (cut := time.monotonic() > end):
        if sel.select(timeout=1.0):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            sys.stdout.write(line)
    if cut:
        proc.kill()
    proc.wait()
    return proc.returncode, "".join(lines), cut


def synthetic_cifar10(root: Path, n_train: int = 320, n_test: int = 32) -> Path:
    """Random CIFAR-10 files in the python layout, one colour tint per class (learnable): the tiny mode."""
    import numpy as np

    rng, folder = np.random.default_rng(0), root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    tint = np.stack([np.linspace(0, 1, 10), np.linspace(1, 0, 10), (np.arange(10) % 3) / 2.0], 1)

    def make(n: int) -> dict:
        y = rng.integers(0, 10, n)
        x = 0.5 * rng.integers(0, 256, (n, 3, 32, 32)) + 127 * tint[y][:, :, None, None]
        return {"data": x.clip(0, 255).astype(np.uint8).reshape(n, 3072), "labels": y.tolist()}

    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(make(n_train // 5)))
    (folder / "test_batch").write_bytes(pickle.dumps(make(n_test)))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    return root
