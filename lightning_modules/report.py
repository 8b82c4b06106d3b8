"""The robustness report: JSON, a Markdown table, plots; every file written atomically.

Input is :meth:`lightning_modules.evaluation.RobustEvaluator.summary`. :func:`write_report`
writes into a folder:

- ``robustness.json`` — the whole summary (rows, worst cases, sweeps, sanity checks, settings);
- ``robustness.md`` — :func:`markdown_report`: the main table (clean and every attack, without
  and with the reversal, the worst case per example per threat model), the sweeps, the sanity
  checks, with a loud banner when any failed;
- ``robust_acc_vs_eps.png`` — robust accuracy vs eps, without and with the reversal;
- ``acc_vs_reversal_steps.png`` — accuracy vs reversal steps (clean and attacked).

Example:
    >>> from lightning_modules.report import markdown_table
    >>> summary = {"clean": {"without": 0.9, "with": 0.88, "n": 10}, "rows": [], "worst_case": [],
    ...            "sanity": [], "sweeps": {"eps": [], "attack_steps": [], "reversal_steps": []}}
    >>> print(markdown_table(summary).splitlines()[2])
    | clean | none | - | 90.00% | 88.00% | 10 |
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from .evaluation import atomic_write_text

REPORT_NAME = "robustness"


def _pct(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def markdown_table(summary: dict) -> str:
    """The main table: one row per (threat model, attack) plus the worst case per threat model."""
    lines = ["| Threat model | Attack | Type | Without reversal | With reversal | n |",
             "|---|---|---|---:|---:|---:|"]
    c = summary["clean"]
    lines.append(f"| clean | none | - | {_pct(c.get('without'))} | {_pct(c.get('with'))} | {c.get('n', 0)} |")
    worst = {(w["threat"], w["eps"]): w for w in summary.get("worst_case", [])}
    threats: list[tuple] = []
    for r in summary.get("rows", []):
        if (r["threat"], r["eps"]) not in threats:
            threats.append((r["threat"], r["eps"]))
    for t in threats:
        for r in (r for r in summary["rows"] if (r["threat"], r["eps"]) == t):
            lines.append(f"| {r['threat']} {r['eps_label']} | {r['label']} | {r['kind']} | {_pct(r['without'])} | "
                         f"{_pct(r['with'])} | {r['n']} |")
        w = worst.get(t)
        if w is not None:
            lines.append(f"| {w['threat']} {w['eps_label']} | **worst case per example (all attacks)** | all | "
                         f"**{_pct(w['without'])}** | **{_pct(w['with'])}** | {w['n']} |")
    return "\n".join(lines)


def sanity_lines(summary: dict) -> list[str]:
    out = []
    for s in summary.get("sanity", []):
        mark = {True: "PASS", False: "**FAILED**", None: "skipped"}[s["passed"]]
        out.append(f"- {mark}: {s['name']} — {s['detail']}")
    return out


def failed_checks(summary: dict) -> list[dict]:
    return [s for s in summary.get("sanity", []) if s["passed"] is False]


def markdown_report(summary: dict, title: str = "Robustness evaluation") -> str:
    """The full Markdown report (table, headline, sweeps, sanity checks, notes)."""
    md = [f"# {title}", ""]
    bad = failed_checks(summary)
    if bad:
        md += [f"> **WARNING: {len(bad)} SANITY CHECK(S) FAILED** — the numbers below may not be reliable:",
               *[f"> - {s['name']}: {s['detail']}" for s in bad], ""]
    meta = summary.get("meta", {})
    if meta.get("model"):
        md += [f"Model: `{meta['model']}`" + (f", checkpoint `{meta['checkpoint']}`" if meta.get("checkpoint") else ""), ""]
    heads = summary.get("worst_case", [])
    if heads:
        md += ["**Headline** (worst case per example over every attack):", ""]
        md += [f"- {w['threat']} {w['eps_label']}: robust accuracy {_pct(w['without'])} without the reversal, "
               f"**{_pct(w['with'])} with the reversal** (n={w['n']})" for w in heads]
        md.append("")
    md += [markdown_table(summary), "",
           "Non-adaptive attacks are crafted on the classifier alone; *with reversal* reverses those examples before "
           "classifying. Adaptive attacks are crafted against the reversal; *without reversal* classifies their "
           "examples with the classifier alone. The worst case counts an example as robust only if it is classified "
           "correctly clean and under every attack of its threat model.", ""]
    sw = summary.get("sweeps", {})
    if sw.get("eps"):
        md += ["## Accuracy vs eps", "", "| eps | attack | Without reversal | With reversal | n |", "|---|---|---:|---:|---:|"]
        md += [f"| {r['norm']} {r['eps_label']} | {r['attack']} | {_pct(r['without'])} | {_pct(r['with'])} | {r['n']} |"
               for r in sw["eps"]]
        md.append("")
    if sw.get("attack_steps"):
        md += ["## Accuracy vs attack steps", "", "| attack | steps | Without reversal | With reversal | n |",
               "|---|---:|---:|---:|---:|"]
        md += [f"| {r['attack']} | {r['steps']} | {_pct(r['without'])} | {_pct(r['with'])} | {r['n']} |"
               for r in sw["attack_steps"]]
        md.append("")
    if sw.get("reversal_steps"):
        md += ["## Accuracy vs reversal steps", "", "| reversal steps | input | With reversal | n |", "|---:|---|---:|---:|"]
        md += [f"| {r['reversal_steps']} | {r['attack']} | {_pct(r['with'])} | {r['n']} |" for r in sw["reversal_steps"]]
        md.append("")
    if summary.get("sanity"):
        md += ["## Sanity checks", "", *sanity_lines(summary), ""]
    skipped = meta.get("skipped") or {}
    if skipped:
        md += ["Not run: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()), ""]
    return "\n".join(md)


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the headless Agg backend (imported on first use only)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> None:
    """Write ``fig`` atomically (temp file + rename) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    pyplot().close(fig)
    os.replace(tmp, path)


def plot_eps(summary: dict, path: Path) -> Optional[Path]:
    """Robust accuracy vs eps, one line per (attack, without/with reversal)."""
    rows = summary.get("sweeps", {}).get("eps", [])
    if not rows:
        return None
    fig, ax = pyplot().subplots(figsize=(6, 4))
    norm = rows[0]["norm"]
    linf = norm == "Linf"
    for attack in dict.fromkeys(r["attack"] for r in rows):
        pts = sorted((r for r in rows if r["attack"] == attack), key=lambda r: r["eps"])
        xs = [r["eps"] * 255 if linf else r["eps"] for r in pts]
        kind = pts[0]["kind"]
        cols = (("without", "-"), ("with", "--")) if kind != "adaptive" else (("with", "--"),)
        for col, style in cols:
            ys = [100 * r[col] if r[col] is not None else None for r in pts]
            if any(v is not None for v in ys):
                lab = f"{attack} ({kind}), {col} reversal"
                ax.plot(xs, [v if v is not None else float("nan") for v in ys], style, marker="o", label=lab)
    ax.set_xlabel(f"eps ({norm}" + (", x/255)" if linf else ")"))
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Robust accuracy vs eps")
    save_figure(fig, path)
    return path


def plot_reversal_steps(summary: dict, path: Path) -> Optional[Path]:
    """Accuracy vs reversal steps for clean inputs and each attacked input."""
    rows = summary.get("sweeps", {}).get("reversal_steps", [])
    if not rows:
        return None
    fig, ax = pyplot().subplots(figsize=(6, 4))
    for attack in dict.fromkeys(r["attack"] for r in rows):
        pts = sorted((r for r in rows if r["attack"] == attack), key=lambda r: r["reversal_steps"])
        ax.plot([r["reversal_steps"] for r in pts], [100 * r["with"] for r in pts], marker="o",
                label=attack if attack == "clean" else f"{attack} ({'adaptive' if attack != 'pgd' else 'non-adaptive'})")
    ax.set_xlabel("reversal steps")
    ax.set_ylabel("accuracy after reversal (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Accuracy vs reversal steps")
    save_figure(fig, path)
    return path


def write_report(summary: dict, out_dir: str | Path, name: str = REPORT_NAME, plots: bool = True) -> dict[str, Path]:
    """Write JSON, Markdown and plots into ``out_dir``; returns ``{kind: path}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json", "markdown": out / f"{name}.md"}
    atomic_write_text(paths["json"], json.dumps(summary, indent=2, default=str))
    atomic_write_text(paths["markdown"], markdown_report(summary))
    if plots:
        for kind, fn, fname in (("plot_eps", plot_eps, "robust_acc_vs_eps.png"),
                                ("plot_reversal_steps", plot_reversal_steps, "acc_vs_reversal_steps.png")):
            p = fn(summary, out / fname)
            if p is not None:
                paths[kind] = p
    return paths


def flat_metrics(summary: dict, prefix: str = "eval") -> dict[str, float]:
    """Scalar metrics for loggers: clean, every row and the worst cases (``None`` values dropped)."""
    m: dict[str, float] = {}

    def put(k: str, v: Optional[float]) -> None:
        if v is not None:
            m[f"{prefix}/{k}"] = float(v)

    put("clean_acc", summary["clean"].get("without"))
    put("clean_acc_reversed", summary["clean"].get("with"))
    for r in summary.get("rows", []):
        t = f"{r['threat']}_{r['eps_label'].replace('/', '_')}"
        put(f"{t}/{r['attack']}_acc", r["without"])
        put(f"{t}/{r['attack']}_acc_reversed", r["with"])
    for w in summary.get("worst_case", []):
        t = f"{w['threat']}_{w['eps_label'].replace('/', '_')}"
        put(f"{t}/robust_acc", w["without"])
        put(f"{t}/robust_acc_reversed", w["with"])
    put("sanity_failed", float(len(failed_checks(summary))))
    return m


__all__ = ["markdown_table", "markdown_report", "write_report", "plot_eps", "plot_reversal_steps", "flat_metrics",
           "failed_checks"]
