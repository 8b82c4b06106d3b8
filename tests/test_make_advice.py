"""The Makefile's advice works through make: with no data and no pack, `make data` names DOWNLOAD=1,
and DOWNLOAD=1 runs torchvision's downloader (shown with `make -n`: nothing is fetched here)."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-C", str(ROOT), *args], capture_output=True, text=True)


def test_missing_data_names_the_fix_that_works_through_make(tmp_path):
    out = make("data", f"DATA_DIR={tmp_path / 'data'}", f"PACK={tmp_path / 'none.npz'}")
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-2 if out.stderr.strip().endswith("Error 1") else -1]
    assert last.startswith("error: CIFAR-10 missing") and "DOWNLOAD=1" in last and "PACK=" in last


def test_download_flag_reaches_the_data_step(tmp_path):
    out = make("-n", "data", f"DATA_DIR={tmp_path / 'data'}", f"PACK={tmp_path / 'none.npz'}", "DOWNLOAD=1")
    assert out.returncode == 0
    assert "CIFAR10(" in out.stdout and "download=True" in out.stdout


@pytest.mark.parametrize(
    "args, root",
    [
        ("", "logs"),
        ("--ckpt_path last", "logs"),
        ("--trainer.default_root_dir {d}", "{d}"),
        ("--x 1 --trainer.default_root_dir={d}", "{d}"),
    ],
    ids=["default", "resume", "own_folder", "own_folder_equals"],
)
def test_train_cifar10_evaluates_the_checkpoint_its_fit_wrote(tmp_path, args, root):
    """ARGS reach the fit, which is told it runs under make (its advice then reads ARGS='...'); the accuracy
    check and the picture load the checkpoint of that fit, also in the folder ARGS gave it."""
    data = tmp_path / "data" / "cifar-10-batches-py"
    data.mkdir(parents=True)
    (data / "test_batch").write_bytes(b"")  # `make data` has nothing to do
    cli = tmp_path / "cli"
    cli.write_text('#!/bin/sh\necho "$SSL_REVERSAL_MAKE|$*"\n')  # stands in for `lightning`: says what it got
    cli.chmod(0o755)
    args, root = args.format(d=tmp_path / "own"), root.format(d=tmp_path / "own")
    out = make("train-cifar10", "TRAIN_DEVICE=cpu", f"CLI={cli}", f"DATA_DIR={tmp_path / 'data'}", f"ARGS={args}")
    assert out.returncode == 0, out.stderr
    runs = {ln.split("|")[1].split()[0]: ln for ln in out.stdout.splitlines() if "|" in ln}
    assert runs["fit"].startswith("make train-cifar10|fit ") and runs["fit"].endswith(f" {args}".rstrip())
    for sub in ("test", "predict"):
        assert f"--ckpt_path {root}/checkpoints/cifar10/cpu/last.ckpt " in runs[sub], runs[sub]
        assert not runs[sub].startswith("make")  # only the fit is told (an evaluation writes no checkpoints)
