"""The package's lazy top level: every public name resolves to the module that defines it, and the
building blocks import without Lightning."""

from __future__ import annotations

import subprocess
import sys

import pytest

import lightning_modules
from tests.cli_runs import REPO

WITHOUT_LIGHTNING = (
    "lightning_modules",
    "lightning_modules.losses",
    "lightning_modules.attacks",
    "lightning_modules.nn",
    "lightning_modules.views",
    "lightning_modules.defense.reversal",
)


def test_every_public_name_resolves_to_its_defining_module():
    for name in lightning_modules.__all__:
        obj = getattr(lightning_modules, name)
        assert obj is getattr(sys.modules[obj.__module__], name), name
    assert set(lightning_modules.__all__) <= set(dir(lightning_modules))
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        lightning_modules.no_such_name


def test_building_blocks_import_without_lightning():
    """One fresh interpreter imports the modules in turn and names the first one that loaded Lightning."""
    code = (
        "import importlib, sys\n"
        f"for m in {WITHOUT_LIGHTNING!r}:\n"
        "    importlib.import_module(m)\n"
        "    if {'lightning', 'pytorch_lightning', 'lightning_fabric'} & {k.split('.')[0] for k in sys.modules}:\n"
        "        print(m); break\n"
        "else:\n"
        "    print('none')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["none"], f"{r.stdout.strip()} loads Lightning"
