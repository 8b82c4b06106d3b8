#!/usr/bin/env python
"""Prepare what a GPU machine lacks for ``scripts/gpu_run.py``: wheels and the CIFAR-10 pack.

The GPU machine has torch, lightning, torchmetrics, torchvision, numpy, Pillow and matplotlib (Python
3.12) and reaches no registry. This downloads cp312 manylinux wheels of the rest into ``.whl/`` (pyautoattack
without its ~45 MB example weights, which nothing here uses), copies the pack and its unpacking script
into ``shared_pack/`` and prints the size that travels (working tree + carried folders, limit 64 MiB).

    python scripts/device_wheels.py [--pack ../shared/data/cifar10-jpeg.npz]    # make device-wheels
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# pinned: one version of each (two would stop the install there)
WHEELS = (
    "kornia==0.9.0 kornia_rs==0.2.0 pyautoattack==0.2.0 jsonargparse==4.53.0 docstring_parser==0.18.0 "
    "typeshed_client==2.15.0"
).split()
PLATFORMS = [f"manylinux_2_{v}_x86_64" for v in (28, 27, 17)] + ["manylinux2014_x86_64", "manylinux1_x86_64"]
LIMIT_MIB = 64


def strip_wheel(path: Path, drop: tuple[str, ...] = (".pt", ".h5")) -> int:
    """Remove ``*/examples/*`` files ending in ``drop`` and their RECORD lines; returns bytes removed."""
    from lightning_modules.util import atomic_write

    removed = 0

    def write(f) -> None:
        nonlocal removed
        with zipfile.ZipFile(path) as src, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as dst:
            gone = {i.filename for i in src.infolist() if "/examples/" in i.filename and i.filename.endswith(drop)}
            for info in src.infolist():
                if info.filename in gone:
                    removed += info.file_size
                    continue
                data = src.read(info.filename)
                if info.filename.endswith(".dist-info/RECORD"):
                    data = b"".join(
                        ln for ln in data.splitlines(keepends=True) if ln.split(b",", 1)[0].decode() not in gone
                    )
                dst.writestr(info, data)

    atomic_write(path, write)
    return removed


def travelling_mib(carry: list[str]) -> float:
    """Tracked + untracked-not-ignored files of the working tree, plus the carried folders, in MiB."""
    git = ["git", "ls-files", "-co", "--exclude-standard", "-z"]
    ls = subprocess.run(git, cwd=REPO, capture_output=True, check=True)
    paths = [REPO / f for f in ls.stdout.decode().split("\0") if f]
    paths += [p for c in carry for p in (REPO / c).rglob("*")]
    return sum(p.stat().st_size for p in paths if p.is_file()) / 2**20


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pack", default=str(REPO.parent / "shared" / "data" / "cifar10-jpeg.npz"))
    p.add_argument("--wheels", default=".whl")
    p.add_argument("--pack-dir", default="shared_pack")
    a = p.parse_args(argv)
    pack = Path(a.pack)
    script = pack.with_name("cifar10_from_pack.py")
    for f in (pack, script):
        if not f.is_file():
            sys.exit(f"missing {f}: the shared CIFAR-10 pack and its script live in ../shared/data (pass --pack PATH)")
    wheels = REPO / a.wheels
    if wheels.is_dir():
        shutil.rmtree(wheels)
    cmd = [sys.executable, *"-m pip download -q --no-deps --only-binary=:all: --python-version 3.12".split()]
    cmd += ["--implementation", "cp", *[x for pl in PLATFORMS for x in ("--platform", pl)], "-d", str(wheels), *WHEELS]
    if subprocess.run(cmd).returncode != 0:
        sys.exit(f"pip download failed: {' '.join(cmd)}")
    for w in wheels.glob("pyautoattack-*.whl"):
        print(f"{w.name}: removed {strip_wheel(w) / 2**20:.1f} MiB of example weights")
    git = ["git", "-C", str(REPO)]
    commit = subprocess.run([*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True).stdout.strip()
    (wheels / "COMMIT").write_text(f"{commit}{' +uncommitted' if dirty else ''}\n")  # the run's tree may lack .git
    dest = REPO / a.pack_dir
    dest.mkdir(exist_ok=True)
    for f in (pack, script):
        (dest / f.name).unlink(missing_ok=True)  # the shared copies are read-only
        shutil.copyfile(f, dest / f.name)
    size = travelling_mib([a.wheels, a.pack_dir])
    print(
        f"{a.wheels}/: {len(list(wheels.glob('*.whl')))} wheels; {a.pack_dir}/: pack + script; "
        f"travelling with carry [{a.wheels}, {a.pack_dir}]: {size:.1f} MiB (limit {LIMIT_MIB})"
    )
    if size >= LIMIT_MIB:
        sys.exit(f"{size:.1f} MiB would travel: over the device tool's {LIMIT_MIB} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
