"""Plumbing of ``experiments/gpu_run.py``: a log tee, subprocesses killed at a budget, tiny synthetic CIFAR-10."""

from __future__ import annotations

import os
import pickle
import selectors
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent


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
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    lines: list[str] = []
    end = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    cut = False
    while True:
        if time.monotonic() > end:
            cut = True
            proc.kill()
            break
        if sel.select(timeout=1.0):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            sys.stdout.write(line)
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
