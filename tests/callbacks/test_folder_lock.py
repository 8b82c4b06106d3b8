"""One checkpoint folder, one run: a second fit into a folder in use is refused naming the first; a killed
run's lock is taken over; a new fit into a folder holding a finished run's checkpoints is refused naming them;
``--ckpt_path last`` never picks another run's ``last-v1.ckpt``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from callbacks.checkpoint import LOCK_NAME, FolderInUseError, acquire_folder_lock, release_folder_lock
from lightning_modules.cli import run_cli
from lightning_modules.cli_checks import CLIError, resolve_ckpt_path
from tests.cli_runs import lightning, tiny_args
from tests.conftest import write_cifar10


def write_lock(folder: Path, pid: int, host: str = socket.gethostname()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    lock.write_text(json.dumps({"pid": pid, "host": host, "command": "lightning fit --config other.yaml"}))
    return lock


@pytest.fixture
def live_pid():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(10**6)"])  # alive until the test ends
    yield proc.pid
    proc.kill()
    proc.wait()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_live_lock_is_refused_naming_its_process_and_a_dead_one_is_taken_over(tmp_path, live_pid):
    write_lock(tmp_path / "a", live_pid)
    with pytest.raises(FolderInUseError, match=rf"in use by another fit \(PID {live_pid} on .*other\.yaml"):
        acquire_folder_lock(tmp_path / "a")
    write_lock(tmp_path / "b", 12345, host="another-host")  # cannot tell whether it lives: refused
    with pytest.raises(FolderInUseError, match="another-host"):
        acquire_folder_lock(tmp_path / "b")
    lock = write_lock(tmp_path / "c", dead_pid())
    assert acquire_folder_lock(tmp_path / "c") == lock
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    release_folder_lock(tmp_path / "c")
    assert not lock.exists()
    release_folder_lock(tmp_path / "a")  # not ours: left in place
    assert (tmp_path / "a" / LOCK_NAME).exists()


def test_a_second_fit_into_a_folder_in_use_refuses_and_a_finished_fit_frees_it(tmp_path, live_pid):
    data = write_cifar10(tmp_path / "data", n_train=8, n_test=8)
    root = tmp_path / "run"
    args = tiny_args(data, root, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0")
    lock = write_lock(root / "checkpoints" / "tiny", live_pid)
    r = lightning("fit", *args, cwd=tmp_path)
    last = (r.stdout + r.stderr).strip().splitlines()[-1]
    assert r.returncode != 0 and f"PID {live_pid}" in last and "--trainer.default_root_dir" in last, last
    assert not (root / "checkpoints" / "tiny" / "last.ckpt").exists()
    lock.unlink()
    r = lightning("fit", *args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not lock.exists() and (root / "checkpoints" / "tiny" / "last.ckpt").is_file()


def test_ckpt_path_last_never_picks_another_runs_file(tmp_path):
    (tmp_path / "last-v1.ckpt").write_bytes(b"other run")
    with pytest.raises(CLIError, match=r"only .*last-v1\.ckpt \(another run's.*--ckpt_path FILE"):
        resolve_ckpt_path("last", [tmp_path])
    (tmp_path / "last.ckpt").write_bytes(b"this run")
    os.utime(tmp_path / "last.ckpt", (0, 0))  # older than last-v1.ckpt: still the one
    assert resolve_ckpt_path("last", [tmp_path]) == str(tmp_path / "last.ckpt")


def test_a_new_fit_into_a_folder_holding_a_finished_run_refuses_naming_the_files(tmp_path):
    data = write_cifar10(tmp_path / "data", n_train=8, n_test=8)
    root = tmp_path / "run"
    folder = root / "checkpoints" / "tiny"
    args = tiny_args(data, root, "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0")
    r = lightning("fit", *args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    before = {p.name: p.read_bytes() for p in folder.glob("*.ckpt")}
    assert "last.ckpt" in before and not (folder / LOCK_NAME).exists()  # finished: its lock released

    r = lightning("fit", *args, cwd=tmp_path)  # a new run (no --ckpt_path) into the same folder
    last = (r.stdout + r.stderr).strip().splitlines()[-1]
    assert r.returncode != 0 and last.startswith("error: FolderHoldsRunError: "), last
    assert f"checkpoint folder {folder} already holds an earlier run's checkpoints (" in last
    assert all(name in last for name in before), last
    assert "--ckpt_path last" in last and "--trainer.default_root_dir DIR" in last and f"remove {folder}" in last
    assert not any("train/loss" in p.read_text() for p in root.rglob("version_1/metrics.csv"))  # before training
    assert {p.name: p.read_bytes() for p in folder.glob("*.ckpt")} == before  # no last-v1.ckpt, nothing replaced
    assert not (folder / LOCK_NAME).exists()

    resume = ("--trainer.max_steps", "3", "--trainer.limit_val_batches", "0", "--ckpt_path", "last")
    r = lightning("fit", *tiny_args(data, root, *resume), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]  # resuming that run is what the folder is for
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 3
    assert not list(folder.glob("*-v1.ckpt"))


def test_a_fast_dev_run_saves_nothing_and_may_run_beside_a_finished_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = write_cifar10(tmp_path / "data", n_train=8, n_test=8)
    root = tmp_path / "run"
    folder = root / "checkpoints" / "tiny"
    smoke = tiny_args(data, root, "--trainer.fast_dev_run", "1", "--trainer.limit_val_batches", "0")
    run_cli(["fit", *smoke])
    assert not list(folder.glob("*.ckpt"))  # so the real run after it starts in an empty folder
    run_cli(["fit", *tiny_args(data, root, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0")])
    before = {p.name: p.read_bytes() for p in folder.glob("*.ckpt")}
    assert "last.ckpt" in before
    assert run_cli(["fit", *smoke]).trainer.global_step == 1  # writes nothing: nothing to mix
    assert {p.name: p.read_bytes() for p in folder.glob("*.ckpt")} == before
