"""A non-editable install carries the base config (trainer defaults, ``inference_mode: false``) and every
sub-package of ``lightning_modules``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from tests.cli_runs import REPO


def test_a_regular_install_finds_its_base_config(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for pkg in ("lightning_modules", "datamodules", "callbacks"):
        shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site)]
    r = subprocess.run([*pip, str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert (site / "lightning_modules" / "base.yaml").is_file()
    for sub in ("attacks", "evaluation", "nn", "views"):  # the sub-packages ship too
        assert (site / "lightning_modules" / sub / "__init__.py").is_file(), sub
    # imported from the install (not the repository), the CLI reads the base file inside the install
    code = "import lightning_modules.cli as c; print(c.BASE_CONFIG, c.BASE_CONFIG.is_file())"
    env = {**os.environ, "PYTHONPATH": str(site)}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == [str(site / "lightning_modules" / "base.yaml"), "True"]
