"""Weights as bf16 shards small enough to travel (files under a size limit), and back.

:func:`save_shards` writes a state dict, floating-point tensors cast to bf16 (integer buffers unchanged), as
``PREFIX-00-of-NN.pt`` files of at most ``max_bytes``, each self-describing with plain types only (``{"tensors",
"meta": {"index", "count", "keys", "extra"}}``); :func:`load_shards` reads them with ``weights_only=True``, checks
that the set and its keys are complete and merges them; :func:`module_from_shards` rebuilds the ReversalModule.

Example:
    >>> import tempfile, torch
    >>> sd = {"w": torch.randn(4, 4), "n": torch.tensor(3)}
    >>> with tempfile.TemporaryDirectory() as d:
    ...     names = save_shards(sd, d, max_bytes=1 << 20)
    ...     back = load_shards(d)
    >>> names, back["w"].dtype, bool(torch.equal(back["w"], sd["w"].bfloat16())), int(back["n"])
    (['weights-00-of-01.pt'], torch.bfloat16, True, 3)
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any, Optional

import torch

from lightning_modules.util import atomic_write

PREFIX = "weights"
MAX_BYTES = 15 * 2**20  # under the 16 MiB a returned file may have, with room for the container
_NAME = re.compile(r"^(?P<prefix>.+)-(?P<i>\d{2})-of-(?P<n>\d{2})\.pt$")


def to_bf16(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating-point tensors as bf16 (detached, on the CPU, contiguous); other tensors unchanged."""
    return {
        k: (v.detach().cpu().to(torch.bfloat16) if v.is_floating_point() else v.detach().cpu()).contiguous()
        for k, v in state_dict.items()
        if torch.is_tensor(v)
    }


def save_shards(
    state_dict: dict[str, torch.Tensor],
    folder: str | os.PathLike,
    extra: Optional[dict[str, Any]] = None,
    prefix: str = PREFIX,
    max_bytes: int = MAX_BYTES,
) -> list[str]:
    """Write the bf16 state dict as shards of at most ``max_bytes`` bytes each; returns the file names.

    ``extra`` (plain types: hyperparameters, provenance) is stored in every shard."""
    sd = to_bf16(state_dict)
    budget = max_bytes - min(256 * 1024, max_bytes // 10)  # torch.save's container and the key names
    groups: list[list[str]] = [[]]
    used = 0  # bytes in the last group
    for k, v in sd.items():
        n = v.numel() * v.element_size()
        if n > budget:
            raise ValueError(
                f"tensor {k} ({n / 2**20:.1f} MiB in bf16) exceeds the shard limit of "
                f"{max_bytes / 2**20:.1f} MiB; split it or raise max_bytes"
            )
        if groups[-1] and used + n > budget:
            groups.append([])
            used = 0
        groups[-1].append(k)
        used += n
    if len(groups) > 99:
        raise ValueError(f"{len(groups)} shards: more than the 99 the names allow")
    folder = Path(folder)
    for old in folder.glob(f"{prefix}-*-of-*.pt"):  # a set from an earlier run would mix with this one
        old.unlink()
    names = []
    for i, keys in enumerate(groups):
        name = f"{prefix}-{i:02d}-of-{len(groups):02d}.pt"
        buf = io.BytesIO()
        meta = {"index": i, "count": len(groups), "keys": list(keys), "extra": dict(extra or {})}
        torch.save({"tensors": {k: sd[k] for k in keys}, "meta": meta}, buf)
        if buf.tell() > max_bytes:
            raise ValueError(f"shard {name} came out at {buf.tell()} bytes, over the limit {max_bytes}")
        atomic_write(folder / name, lambda f: f.write(buf.getvalue()))
        names.append(name)
    return names


def shard_files(folder: str | os.PathLike, prefix: str = PREFIX) -> list[Path]:
    """The shard files of ``folder``, in order; raises naming what is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no folder {folder}: pass the folder a GPU run returned (it holds {prefix}-00-of-NN.pt)"
        )
    matches = [(m, p) for p in folder.iterdir() if (m := _NAME.match(p.name)) and m["prefix"] == prefix]
    found, counts = {int(m["i"]): p for m, p in matches}, {int(m["n"]) for m, _ in matches}
    if not found:
        raise FileNotFoundError(f"no weight shards ({prefix}-00-of-NN.pt) in {folder}")
    if len(counts) != 1:
        raise ValueError(f"shards of different sets in {folder}: counts {sorted(counts)}")
    n = counts.pop()
    missing = [f"{prefix}-{i:02d}-of-{n:02d}.pt" for i in range(n) if i not in found]
    if missing:
        raise FileNotFoundError(f"incomplete shard set in {folder}: missing {', '.join(missing)}")
    return [found[i] for i in range(n)]


def read_shards(folder: str | os.PathLike, prefix: str = PREFIX) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, extra)`` from the shards (``weights_only=True``)."""
    sd: dict[str, torch.Tensor] = {}
    extra: dict[str, Any] = {}
    for p in shard_files(folder, prefix):
        blob = torch.load(p, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or "tensors" not in blob or "meta" not in blob:
            raise ValueError(f"{p} is not a weight shard (expected keys 'tensors' and 'meta')")
        if sorted(blob["meta"]["keys"]) != sorted(blob["tensors"]):
            raise ValueError(f"{p}: its tensors do not match the keys it lists")
        sd.update(blob["tensors"])
        extra = blob["meta"].get("extra") or extra
    return sd, extra


def load_shards(folder: str | os.PathLike, prefix: str = PREFIX) -> dict[str, torch.Tensor]:
    """The bf16 state dict reassembled from ``folder``'s shards."""
    return read_shards(folder, prefix)[0]


def module_from_shards(folder: str | os.PathLike, prefix: str = PREFIX, **overrides: Any):
    """A :class:`~lightning_modules.methods.module.ReversalModule` (fp32, eval mode) with the shards' weights,
    built from the hyperparameters the shards carry (``extra["hyper_parameters"]``); ``overrides``
    replace some (``speed.compile`` is off here)."""
    from lightning_modules.methods.module import ReversalModule

    sd, extra = read_shards(folder, prefix)
    hp = {k: v for k, v in (extra.get("hyper_parameters") or {}).items() if not k.startswith("_")}
    if not hp:
        raise ValueError(
            f"the shards in {folder} carry no hyper_parameters: build the module yourself and "
            "load_state_dict(load_shards(folder))"
        )
    hp.update({"speed": {**(hp.get("speed") or {}), "compile": False}, **overrides})
    module = ReversalModule(**hp)
    module.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()})
    return module.eval()


__all__ = ["save_shards", "load_shards", "read_shards", "shard_files", "module_from_shards", "to_bf16", "MAX_BYTES"]
