"""Per-example results of the evaluation, on disk as JSON, resumable and mergeable across ranks.

``rows[key][idx]`` is how many of the row's ``draws[key]`` draws classified example ``idx``
correctly (1 of 1 for a deterministic classifier; ``k`` of ``draws`` for the randomized reversal).
``meta`` says what was evaluated: weights, reversal, every evaluation setting, the data and batch
layout (the reversal depends on its batch), versions. A store is only ever resumed or merged into
an evaluation whose meta is identical; a store without meta is refused.

Example:
    >>> from lightning_modules.evaluation.store import ResultStore
    >>> s = ResultStore({"weights_sha1": "abc"})
    >>> s.add("clean|with", [0, 1, 2], [5, 3, 0], draws=5)
    >>> s.accuracy(["clean|with"])  # correct on every draw
    (0.3333333333333333, 3)
    >>> s.draw_stats("clean|with")  # mean over draws, examples whose draws disagree
    {'mean': 0.5333333333333333, 'disagreement': 0.3333333333333333}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import torch

from ..util import atomic_write_text

FORMAT = "ssl-reversal per-example results v2"
Ints = Union[torch.Tensor, Sequence[int]]  # example indices, or bools / correct-draw counts


def jsonable(d: Any) -> Any:
    """``d`` as it reads back from JSON (tuples -> lists, other objects -> str)."""
    return json.loads(json.dumps(d, default=str))


def differing_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two nested dicts differ (``config.eot``, ``reversal.steps``)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b), key=str):
            out += differing_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".") or "(value)"]


class ResultStore:
    """Per-example correct-draw counts, keyed by row and data-set index (see the module doc)."""

    def __init__(self, meta: Optional[dict] = None) -> None:
        self.meta: dict = jsonable(dict(meta or {}))
        self.rows: dict[str, dict[int, int]] = {}
        self.draws: dict[str, int] = {}
        self.seconds: dict[str, float] = {}

    def has(self, key: str, idx: Iterable[int]) -> bool:
        row = self.rows.get(key)
        return row is not None and all(int(i) in row for i in idx)

    def add(self, key: str, idx: Ints, correct: Ints, draws: int = 1, seconds: float = 0.0) -> None:
        """Record ``correct`` (bools, or counts of correct draws out of ``draws``) for ``idx``."""
        idx = torch.as_tensor(idx).flatten().tolist()
        correct = [int(c) for c in torch.as_tensor(correct).flatten().tolist()]
        if len(idx) != len(correct):
            raise ValueError(f"row {key}: {len(idx)} indices but {len(correct)} results")
        if self.draws.setdefault(key, int(draws)) != int(draws):
            raise ValueError(f"row {key} was stored with {self.draws[key]} draws, not {draws}")
        if any(c < 0 or c > draws for c in correct):
            raise ValueError(f"row {key}: correct-draw counts must lie in [0, {draws}]")
        self.rows.setdefault(key, {}).update({int(i): c for i, c in zip(idx, correct)})
        self.seconds[key] = self.seconds.get(key, 0.0) + float(seconds)

    def robust(self, key: str, i: int) -> bool:
        """Example ``i`` is correct on every draw of row ``key``."""
        return self.rows[key][i] == self.draws[key]

    def common(self, keys: Sequence[str], subset: Optional[set] = None) -> set:
        if not keys or any(k not in self.rows for k in keys):
            return set()
        out = set(self.rows[keys[0]])
        for k in keys[1:]:
            out &= set(self.rows[k])
        return out & subset if subset is not None else out

    def accuracy(self, keys: Sequence[str], subset: Optional[set] = None) -> tuple[Optional[float], int]:
        """Accuracy of the per-example AND over ``keys`` (every draw of every row) on their common examples."""
        common = self.common(keys, subset)
        if not common:
            return None, 0
        return sum(all(self.robust(k, i) for k in keys) for i in common) / len(common), len(common)

    def draw_stats(self, key: str, subset: Optional[set] = None) -> dict[str, Optional[float]]:
        """Mean accuracy over draws and the share of examples whose draws disagree."""
        ids = set(self.rows.get(key, {})) & subset if subset is not None else set(self.rows.get(key, {}))
        if not ids:
            return {"mean": None, "disagreement": None}
        d, row = self.draws[key], self.rows[key]
        return {
            "mean": sum(row[i] for i in ids) / (d * len(ids)),
            "disagreement": sum(0 < row[i] < d for i in ids) / len(ids),
        }

    def merge(self, other: "ResultStore", source: str = "results") -> "ResultStore":
        if not other.meta or not self.meta or other.meta != self.meta:
            raise ValueError(
                f"cannot merge {source}: it comes from a different evaluation "
                f"(differs in {differing_keys(self.meta, other.meta)})"
            )
        for k, row in other.rows.items():
            if k in self.draws and self.draws[k] != other.draws[k]:
                raise ValueError(f"cannot merge {source}: row {k} has {other.draws[k]} draws, not {self.draws[k]}")
            self.draws[k] = other.draws[k]
            self.rows.setdefault(k, {}).update(row)
            self.seconds[k] = max(self.seconds.get(k, 0.0), other.seconds.get(k, 0.0))
        return self

    def to_dict(self) -> dict:
        rows = {
            k: {"idx": sorted(r), "correct": [r[i] for i in sorted(r)], "draws": self.draws[k]}
            for k, r in self.rows.items()
        }
        return {"format": FORMAT, "meta": self.meta, "rows": rows, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d: dict, source: str = "results") -> "ResultStore":
        if not isinstance(d, dict) or not isinstance(d.get("rows"), dict):
            raise ValueError(f"{source} is not a per-example results file (no 'rows' mapping)")
        if d.get("format") != FORMAT:
            raise ValueError(
                f"{source} is in format {d.get('format')!r}, not {FORMAT!r}: it was written by another "
                "version of the evaluation; use another output_dir or delete it"
            )
        store = cls(d.get("meta") or {})
        for k, r in d["rows"].items():
            try:
                store.add(k, r["idx"], r["correct"], draws=int(r["draws"]))
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{source}: row '{k}' is malformed ({e})") from None
        store.seconds = {k: float(v) for k, v in (d.get("seconds") or {}).items()}
        return store

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path, meta: Optional[dict] = None) -> "ResultStore":
        """Read ``path``; with ``meta``, refuse a file written for another evaluation or without meta."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); delete it or choose another output_dir") from None
        store = cls.from_dict(d, str(path))
        if meta is not None:
            if not store.meta:
                raise ValueError(
                    f"{path} holds results without metadata (what model, data and settings they "
                    "belong to): they cannot be resumed; delete the file or use another output_dir"
                )
            diff = differing_keys(store.meta, jsonable(meta))
            if diff:
                raise ValueError(
                    f"{path} holds results of a different evaluation (differs in {diff}); use another "
                    "output_dir, delete the file, or set resume: false"
                )
        return store


__all__ = ["ResultStore", "atomic_write_text", "jsonable", "differing_keys", "FORMAT"]
