"""The summary of an evaluation: pure functions of the per-example store and the row catalog.

- every row: accuracy without the reversal, with it (correct on **every** draw), the mean over
  draws, the share of examples whose draws disagree, and one column per batch composition;
- per threat model the **worst case per example** over clean and every row run at its budget
  (main rows, every composition, the steps and EOT sweeps): the headline;
- the sweeps, the sanity checks (:mod:`~lightning_modules.evaluation.checks`) and whether the
  headline is reliable (no check failed).

Example:
    >>> from lightning_modules.evaluation.catalog import Row
    >>> from lightning_modules.evaluation.store import ResultStore
    >>> s = ResultStore({"m": 1})
    >>> s.add("clean|without", [0, 1], [1, 1]); s.add("clean|with", [0, 1], [5, 2], draws=5)
    >>> clean = column_stats(s, Row("clean", columns=("without", "with")))
    >>> clean["without"], clean["with"], clean["with_mean"], clean["with_disagreement"]
    (1.0, 0.5, 0.7, 0.5)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

from ..util import eps_label
from .config import EvalConfig
from .registry import ATTACKS
from .stats import PairedCounts, gain_verdict, paired_gain, wilson
from .store import ResultStore, jsonable

TOP_GROUPS = ("main", "steps-sweep", "eot-sweep")  # rows at a threat model's budget: all count in its worst case
TABLE_ROW = ("threat", "eps", "eps_label", "attack", "label", "kind", "key", "params", "subset")  # a table row's keys
POINT = ("norm", "eps", "eps_label", "attack", "kind", "setting", "label", "key")  # a sweep point's keys, in order


def _on_side(column: str, side: str) -> bool:
    """``column`` is ``side`` or ``side@<composition>`` (``with@batch2`` is on the ``with`` side, not ``without``)."""
    return column == side or column.startswith(side + "@")


def column_stats(st: ResultStore, row: Any) -> dict[str, Any]:
    """Accuracy per column of one row on the examples every column has."""
    keys = [row.cell(c) for c in row.columns if row.cell(c) in st.rows]
    common = st.common(keys)
    out: dict[str, Any] = {
        "n": len(common),
        "time_s": round(sum(st.seconds.get(k, 0.0) for k in keys), 3),
        "with_mean": None,
        "with_disagreement": None,
    }
    for col in dict.fromkeys(("without", "with", *row.columns)):
        k = f"{row.key}|{col}"
        out[col] = st.accuracy([k], common)[0] if k in st.rows else None
        if col == "with" and k in st.rows and getattr(row, "stop_draws", False):
            # drawn again only when right on the first draw: the first draw's accuracy is exact, the mean is not
            out["with_first"] = sum(st.rows[k][i] > 0 for i in common) / len(common) if common else None
        elif col == "with" and k in st.rows:
            stats = st.draw_stats(k, common)
            out["with_mean"], out["with_disagreement"] = stats["mean"], stats["disagreement"]
    withs = [row.cell(c) for c in row.columns if row.cell(c) in st.rows and _on_side(c, "with")]
    out["with_worst"] = st.accuracy(withs, common)[0] if withs else None
    for col in ("without", "with"):
        if out.get(col) is not None and common:
            out[f"ci_{col}"] = list(wilson(round(out[col] * len(common)), len(common)))
    a, b = f"{row.key}|with", f"{row.key}|without"
    if a in st.rows and b in st.rows and common:
        ids = sorted(common)
        pc = PairedCounts.from_flags([st.robust(a, i) for i in ids], [st.robust(b, i) for i in ids])
        out["gain"] = paired_gain(pc)
    return out


def _at_budget(rows: Sequence[Any], norm: str, eps: float) -> list:
    """The rows that count in the worst case at ``(norm, eps)`` (main, steps and EOT sweeps, the eps sweep)."""
    tops = (*TOP_GROUPS, "eps-sweep")
    return [r for r in rows if r.group in tops and r.norm == norm and abs(r.eps - eps) < 1e-12]


def _side_keys(st: ResultStore, rows: Sequence[Any], side: str) -> list[str]:
    return [f"{r.key}|{c}" for r in rows for c in r.columns if _on_side(c, side) and f"{r.key}|{c}" in st.rows]


def still_robust(st: ResultStore, earlier: Sequence[Any], row: Any, ids: Sequence[int]) -> list[bool]:
    """Per example of ``ids``: not yet broken, without or with the reversal, by clean and the ``earlier``
    main rows at ``row``'s budget (what a cascaded row attacks: the sweeps' rows of one attack therefore
    all run on the same examples). A row that lacks an example says nothing of it.

    >>> from lightning_modules.evaluation.catalog import Row
    >>> s = ResultStore({"m": 1})
    >>> s.add("clean|without", [0, 1, 2], [1, 1, 0]); s.add("clean|with", [0, 1, 2], [2, 0, 0], draws=2)
    >>> still_robust(s, [Row("clean", columns=("without", "with"))], Row("main", "a"), [0, 1, 2])
    [True, True, False]
    """
    clean = [r for r in earlier if r.group == "clean"]
    mine = clean + [r for r in _at_budget(earlier, row.norm, row.eps) if r.group == "main"]
    sides = [s for s in ("without", "with") if any(_on_side(c, s) for c in row.columns)]
    keys = {s: _side_keys(st, mine, s) for s in sides}  # once per row, not once per example
    return [any(all(st.robust(k, i) for k in keys[s] if i in st.rows[k]) for s in sides) for i in ids]


def worst_case(st: ResultStore, rows: list, norm: str, eps: float) -> Optional[dict[str, Any]]:
    """Per example, robust only if clean and every row at ``(norm, eps)`` (each column, each draw) got it right.

    The examples counted are those that clean and every main row have (with ``adaptive_n``, the first
    ``adaptive_n``: every attack on the defense ran on them); rows meant for a smaller subset (Square,
    the sweeps) count on the examples they have. A cascaded row (``Row.cascade``) lacks the examples
    already broken before it: those are decided; an example robust on every row it has but missing
    from a cascaded main row is not finished (a stopped evaluation) and is left out."""
    mine = _at_budget(rows, norm, eps)
    if not mine:
        return None
    clean = next(r for r in rows if r.group == "clean")
    full = [clean] + [r for r in mine if r.group == "main" and not ATTACKS[r.attack].partial and not r.cascade]
    # partial rows and the sweeps (on their own subsets) never narrow it
    cascaded = [r for r in mine if r.cascade and r.group == "main" and not ATTACKS[r.attack].partial]
    entry: dict[str, Any] = {"threat": norm, "eps": eps, "eps_label": eps_label(eps, norm)}
    flags: dict[str, dict] = {}
    for side in ("without", "with"):
        base = [f"{r.key}|{side}" for r in full if f"{r.key}|{side}" in st.rows]
        if not base or (side == "with" and "clean|with" not in st.rows):
            entry[side] = None
            continue
        ids = st.common(base)
        for r in cascaded:
            if r.subset is not None:
                ids = {i for i in ids if i < r.subset}
        keys = _side_keys(st, [clean] + mine, side)
        asked = [f"{r.key}|{side}" for r in cascaded]
        flags[side] = {}
        for i in ids:
            ok = all(st.robust(k, i) for k in keys if i in st.rows[k])
            if ok and any(i not in st.rows.get(k, {}) for k in asked):
                continue  # robust so far, yet a cascaded row has not run on it: unfinished
            flags[side][i] = ok
        ids = set(flags[side])
        ok = sum(flags[side].values())
        entry[side] = ok / len(ids) if ids else None
        entry[f"n_{side}"] = len(ids)
        entry[f"ci_{side}"] = list(wilson(ok, len(ids))) if ids else None
        entry[f"columns_{side}"] = len(keys)
    entry["n"] = entry.get("n_without", 0)
    if flags.get("with") and flags.get("without"):
        ids = sorted(set(flags["with"]) & set(flags["without"]))
        pc = PairedCounts.from_flags([flags["with"][i] for i in ids], [flags["without"][i] for i in ids])
        entry["gain"] = paired_gain(pc)
        entry["gain"]["verdict"] = gain_verdict(pc)
    entry["attacks"] = sorted({r.attack for r in mine})
    return entry


def sweep_rows(st: ResultStore, rows: list, group: str) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        if r.group != group or not any(f"{r.key}|{c}" in st.rows for c in r.columns):
            continue
        lab = eps_label(r.eps, r.norm) if r.norm else "0"
        point = (r.norm, r.eps, lab, r.attack, r.kind, r.setting, r.label, r.key)
        out.append({**dict(zip(POINT, point)), **column_stats(st, r)})
    return out


def _eps_sweep(st: ResultStore, rows: list, cfg: EvalConfig) -> list[dict[str, Any]]:
    """The eps sweep, with the clean rows as its eps-0 points."""
    out = sweep_rows(st, rows, "eps-sweep")
    if 0 in cfg.sweeps.eps_sweep and out:
        clean = column_stats(st, next(r for r in rows if r.group == "clean"))
        for attack, kind in dict.fromkeys((r["attack"], r["kind"]) for r in out):
            point = (cfg.sweeps.eps_sweep_norm, 0.0, "0", attack, kind, None, "clean", "clean")
            out.insert(0, {**dict(zip(POINT, point)), **clean})
    return out


def summarize(st: ResultStore, rows: list, cfg: EvalConfig, skipped: Optional[dict] = None) -> dict[str, Any]:
    """Everything the report needs (JSON-serializable)."""
    from .checks import sanity_checks

    clean_row = next(r for r in rows if r.group == "clean")
    table = []
    for r in rows:
        if r.group == "main" and (r.cascade or any(f"{r.key}|{c}" in st.rows for c in r.columns)):
            # a cascaded row that found nothing still robust stays in the table with n = 0
            info = (r.norm, r.eps, eps_label(r.eps, r.norm), r.attack, r.label, r.kind, r.key, r.params, r.subset)
            table.append({**dict(zip(TABLE_ROW, info)), "cascade": r.cascade, **column_stats(st, r)})
    worst = [w for w in (worst_case(st, rows, n, e) for n, e in cfg.threat_models.items()) if w is not None]
    summary: dict[str, Any] = {
        "meta": {**st.meta, "config": jsonable(dataclasses.asdict(cfg)), "skipped": dict(skipped or {})},
        "n_examples": len(set().union(*[set(r) for r in st.rows.values()])) if st.rows else 0,
        "draws": cfg.scoring.draws,
        "clean": column_stats(st, clean_row),
        "rows": table,
        "worst_case": worst,
        "sweeps": {
            "eps": _eps_sweep(st, rows, cfg),
            "attack_steps": sweep_rows(st, rows, "steps-sweep"),
            "eot": sweep_rows(st, rows, "eot-sweep"),
            "reversal_steps": sweep_rows(st, rows, "rev-sweep"),
            "sanity": sweep_rows(st, rows, "sanity"),
        },
    }
    summary["sanity"] = sanity_checks(summary, cfg) if cfg.checks.sanity_checks else []
    failed = [s["name"] for s in summary["sanity"] if s["passed"] is False]
    summary["reliable"] = not failed
    summary["headline"] = {
        f"{w['threat']} {w['eps_label']}": {
            "without": w["without"],
            "with": w["with"],
            "n": w["n"],
            "reliable": not failed,
        }
        for w in worst
    }
    return summary


__all__ = ["summarize", "column_stats", "worst_case", "sweep_rows", "TOP_GROUPS"]
