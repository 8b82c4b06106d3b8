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
