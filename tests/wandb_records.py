"""Read an offline W&B run back: the records in ``run-*.wandb`` that ``wandb sync`` uploads and a
dashboard shows (history rows, summary), parsed with wandb's own protobuf definitions.

The file is a LevelDB-style log: a 7-byte W&B header, then 32 KiB blocks of records, each with a
7-byte header (crc32, little-endian length, type: 1 full, 2 first, 3 middle, 4 last).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

BLOCK = 32768


def read_records(path: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    pos, chunks, buf = 7, [], b""
    while pos + 7 <= len(data):
        room = BLOCK - pos % BLOCK
        if room < 7:
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # zero padding to the end of the block
            pos += room
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:
            chunks.append(chunk)
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            chunks.append(buf + chunk)
    return [wandb_internal_pb2.Record.FromString(c) for c in chunks]


def history(path: Path) -> list[dict[str, Any]]:
    """Every logged row, ``{key: value}`` (nested keys joined by ``/``)."""
    rows = []
    for r in read_records(path):
        if r.WhichOneof("record_type") == "history":
            rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item})
    return rows


def run_file(run_dir: Path) -> Path:
    (path,) = Path(run_dir).glob("run-*.wandb")
    return path
