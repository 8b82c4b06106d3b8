"""The wheels that travel to the device: large example files stripped, the RECORD kept consistent,
the wheel replaced atomically."""

from __future__ import annotations

import zipfile
from pathlib import Path

from scripts.device_wheels import strip_wheel


def test_strip_wheel_drops_example_weights_and_their_record_lines(tmp_path: Path):
    whl = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("pkg/__init__.py", "x = 1\n")
        z.writestr("pkg/examples/model.pt", b"0" * 1000)
        z.writestr("pkg-1.0.dist-info/RECORD", "pkg/__init__.py,,\npkg/examples/model.pt,,\n")
    assert strip_wheel(whl) == 1000
    with zipfile.ZipFile(whl) as z:
        assert sorted(z.namelist()) == ["pkg-1.0.dist-info/RECORD", "pkg/__init__.py"]
        assert z.read("pkg-1.0.dist-info/RECORD") == b"pkg/__init__.py,,\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [whl.name]  # no temporary file left
