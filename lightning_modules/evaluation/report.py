"""The robustness report: JSON, a Markdown table, plots; every file written atomically.

Input is :meth:`lightning_modules.evaluation.RobustEvaluator.summary`. :func:`write_report`
writes into a folder:

- ``robustness.json`` — the whole summary (rows, worst cases, sweeps, sanity checks, settings);
- ``robustness.md`` — :func:`markdown_report` (marked UNRELIABLE when a sanity check failed);
- ``robust_acc_vs_eps.png`` — robust accuracy vs eps, without and with the reversal;
- ``acc_vs_reversal_steps.png`` — accuracy vs reversal steps (clean and attacked).

Example:
    >>> from lightning_modules.evaluation.report import markdown_table
    >>> summary = {"draws": 5, "clean": {"without": 0.9, "with": 0.88, "with_mean": 0.9, "with_disagreement": 0.04,
    ...            "with_worst": 0.86, "n": 10, "time_s": 1.0}, "rows": [], "worst_case": []}
    >>> print(markdown_table(summary).splitlines()[2])
    | clean | - | - | 90.00% | 88.00% | 90.00% | 4.00% | 86.00% |  | 10 | 1 s |
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from ..util import atomic_write, atomic_write_text
from .checks import failed_checks

REPORT_NAME = "robustness"


def _pct(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def _ci(ci: Optional[Sequence[float]]) -> str:
    return "n/a" if not ci else f"{100 * ci[0]:.1f}-{100 * ci[1]:.1f}%"


def _br(ci: Optional[Sequence[float]]) -> str:
    return f" [{_ci(ci)}]" if ci else ""


def _gain(g: Optional[dict]) -> str:
    if not g:
        return ""
    return f"{100 * g['gain']:+.1f} ({100 * g['lo']:.1f} to {100 * g['hi']:.1f}), p={g['p_mcnemar']:.2g}"


def _mean(r: dict) -> str:
    """The mean over draws, or (draws stopped after a wrong one) the first draw's accuracy."""
    return f"first draw {_pct(r['with_first'])}" if r.get("with_first") is not None else _pct(r.get("with_mean"))


def _cells(r: dict) -> str:
    return (
        f"{_pct(r.get('without'))}{_br(r.get('ci_without'))} | {_pct(r.get('with'))}{_br(r.get('ci_with'))} | "
        f"{_mean(r)} | {_pct(r.get('with_disagreement'))} | {_pct(r.get('with_worst'))} | "
        f"{_gain(r.get('gain'))} | {r.get('n', 0)} | {r.get('time_s', 0):.0f} s"
    )


def md_table(header: Sequence[object], rows: Iterable[Sequence[object]], align: str = "") -> list[str]:
    """The lines of a Markdown table (the one table writer of the package's reports): ``align`` has one
    letter per column, ``l`` (default) or ``r`` (numbers).

    >>> md_table(["a", "n"], [["x", 1]], "lr")
    ['| a | n |', '|---|---:|', '| x | 1 |']
    """
    align = align or "l" * len(header)
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise ValueError(f"align needs one of l/r per column ({len(header)}), got '{align}'")
    rows = [list(r) for r in rows]
    if any(len(r) != len(header) for r in rows):
        raise ValueError(f"every row needs {len(header)} cells")
    line = lambda cells: "| " + " | ".join(str(c) for c in cells) + " |"  # noqa: E731
    return [line(header), "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|", *map(line, rows)]


def markdown_table(summary: dict) -> str:
    """The main table: clean, one row per (threat model, attack, variant), the worst case per threat model."""
    d = summary.get("draws", 1)
    header = ["Threat model", "Attack", "Type", "Without reversal", f"With reversal (all {d} draws)"]
    header += ["With, mean over draws", "Draw disagreement", "With, worst batch composition"]
    lines = md_table([*header, "Gain, points (95% CI), McNemar p", "n", "time"], [], "lllrrrrrrrr")
    lines.append(f"| clean | - | - | {_cells(summary['clean'])} |")
    worst = {(w["threat"], w["eps"]): w for w in summary.get("worst_case", [])}
    threats = list(dict.fromkeys((r["threat"], r["eps"]) for r in summary.get("rows", [])))
    unreliable = "" if summary.get("reliable", True) else " (UNRELIABLE: a sanity check failed)"
    for t in threats:
        for r in (r for r in summary["rows"] if (r["threat"], r["eps"]) == t):
            sub = f" [idx < {r['subset']}]" if r.get("subset") else ""
            sub += " (on the examples still robust)" if r.get("cascade") else ""
            lines.append(f"| {r['threat']} {r['eps_label']} | {r['label']}{sub} | {r['kind']} | {_cells(r)} |")
        w = worst.get(t)
        if w is not None:
            lines.append(
                f"| {w['threat']} {w['eps_label']} | **worst case per example (every attack, draw and "
                f"composition)**{unreliable} | all | **{_pct(w['without'])}** [{_ci(w.get('ci_without'))}] | "
                f"**{_pct(w['with'])}** [{_ci(w.get('ci_with'))}] | | | | {_gain(w.get('gain'))} | {w['n']} | |"
            )
    return "\n".join(lines)


MARKS = {True: "PASS", False: "**FAILED**", None: "skipped"}  # by a check's "passed"


def sanity_lines(summary: dict) -> list[str]:
    return [f"- {MARKS[s['passed']]}: {s['name']} — {s['detail']}" for s in summary.get("sanity", [])]


def _sweep_table(title: str, rows: list[dict], setting: str) -> list[str]:
    if not rows:
        return []
    header = ["attack", setting, "Without reversal", "With reversal (all draws)", "With, mean", "n"]
    at = "eps_label" if setting == "eps" else "setting"
    cells = [[r["attack"], r[at], _pct(r.get("without")), _pct(r.get("with")), _mean(r), r["n"]] for r in rows]
    return [f"## {title}", "", *md_table(header, cells, "lrrrrr"), ""]


def markdown_report(summary: dict, title: str = "Robustness evaluation") -> str:
    """The full Markdown report (headline, table, sweeps, sanity checks, what did not run)."""
    md = [f"# {title}", ""]
    bad = failed_checks(summary)
    if bad:
        md.append(f"> **WARNING: {len(bad)} SANITY CHECK(S) FAILED — the headline is UNRELIABLE:**")
        md += [f"> - {s['name']}: {s['detail']}" for s in bad] + [""]
    meta = summary.get("meta", {})
    if meta.get("model"):
        ckpt = f", checkpoint `{meta['checkpoint']}`" if meta.get("checkpoint") else ""
        md += [f"Model: `{meta['model']}`{ckpt}", ""]
    heads = summary.get("worst_case", [])
    if heads:
        tag = "" if summary.get("reliable", True) else " — **UNRELIABLE** (see the failed checks)"
        md += [f"**Headline** (worst case per example over every attack, draw and batch composition){tag}:", ""]
        md += [
            f"- {w['threat']} {w['eps_label']}: robust accuracy {_pct(w['without'])} without the reversal, "
            f"**{_pct(w['with'])} with the reversal** (n={w['n']}; 95% CI {_ci(w.get('ci_without'))} without, "
            f"{_ci(w.get('ci_with'))} with)"
            for w in heads
        ]
        md += [f"- {w['threat']} {w['eps_label']}: {w['gain']['verdict']}" for w in heads if w.get("gain")]
        md.append("")
    md += [
        markdown_table(summary),
        "",
        "Non-adaptive attacks are crafted on the classifier alone; *with reversal* reverses those examples before "
        "classifying. Adaptive attacks are crafted against the whole defense and keep their best iterate per "
        f"example; *without reversal* classifies their examples with the classifier alone. Every reversed input "
        f"is reversed {summary.get('draws', 1)} times with independent randomness and counts as correct only if "
        "every draw is; *draw disagreement* is the share of examples whose draws differ. The worst case counts "
        "an example as robust only if it is classified correctly clean and under every attack of its threat "
        "model, every draw and every batch composition.",
        "",
    ]
    sw = summary.get("sweeps", {})
    md += _sweep_table("Accuracy vs eps", sw.get("eps", []), "eps")
    md += _sweep_table("Accuracy vs attack steps (convergence)", sw.get("attack_steps", []), "steps")
    md += _sweep_table("Accuracy vs EOT draws (convergence)", sw.get("eot", []), "EOT")
    md += _sweep_table("Accuracy vs reversal steps", sw.get("reversal_steps", []), "reversal steps")
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
    fmt = Path(path).suffix.lstrip(".") or "png"
    try:
        atomic_write(Path(path), lambda f: fig.savefig(f, format=fmt, dpi=120, bbox_inches="tight"))
    finally:
        pyplot().close(fig)


def _finish(fig: Any, ax: Any, xlabel: str, ylabel: str, title: str, path: Path) -> Path:
    """Labels, a 0-100% axis, grid and legend; then save atomically."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title)
    save_figure(fig, path)
    return path


def _errorbar(ax: Any, xs: Sequence[float], pts: Sequence[dict], col: str, style: str, label: str) -> None:
    """One line of accuracies (%) with their Wilson 95% intervals as error bars."""
    nan = float("nan")
    ys = [100 * r[col] if r.get(col) is not None else nan for r in pts]
    cis = [r.get(f"ci_{col}") or (nan, nan) for r in pts]
    err = [[max(0.0, v - 100 * c[0]) for v, c in zip(ys, cis)], [max(0.0, 100 * c[1] - v) for v, c in zip(ys, cis)]]
    ax.errorbar(xs, ys, yerr=err, fmt=style, marker="o", capsize=3, label=label)


def plot_eps(summary: dict, path: Path) -> Optional[Path]:
    """Robust accuracy vs eps, one line per (attack, without/with reversal), Wilson 95% error bars."""
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
            if any(r[col] is not None for r in pts):
                _errorbar(ax, xs, pts, col, style, f"{attack} ({kind}), {col} reversal")
    xlabel = f"eps ({norm}" + (", x/255)" if linf else ")")
    return _finish(fig, ax, xlabel, "accuracy (%)", "Robust accuracy vs eps", path)


def plot_reversal_steps(summary: dict, path: Path) -> Optional[Path]:
    """Accuracy vs reversal steps for clean inputs and each attacked input, Wilson 95% error bars."""
    rows = summary.get("sweeps", {}).get("reversal_steps", [])
    if not rows:
        return None
    fig, ax = pyplot().subplots(figsize=(6, 4))
    for attack in dict.fromkeys(r["attack"] for r in rows):
        mine = [r for r in rows if r["attack"] == attack and r.get("with") is not None]
        pts = sorted(mine, key=lambda r: r["setting"])
        label = attack if attack == "clean" else f"{attack} ({pts[0]['kind'] if pts else ''})"
        _errorbar(ax, [r["setting"] for r in pts], pts, "with", "-", label)
    return _finish(fig, ax, "reversal steps", "accuracy after reversal (%)", "Accuracy vs reversal steps", path)


def write_report(summary: dict, out_dir: str | Path, name: str = REPORT_NAME, plots: bool = True) -> dict[str, Path]:
    """Write JSON, Markdown and plots into ``out_dir``; returns ``{kind: path}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Optional[Path]] = {"json": out / f"{name}.json", "markdown": out / f"{name}.md"}
    atomic_write_text(paths["json"], json.dumps(summary, indent=2, default=str))
    atomic_write_text(paths["markdown"], markdown_report(summary))
    if plots:
        paths["plot_eps"] = plot_eps(summary, out / "robust_acc_vs_eps.png")
        paths["plot_reversal_steps"] = plot_reversal_steps(summary, out / "acc_vs_reversal_steps.png")
    return {k: p for k, p in paths.items() if p is not None}


def flat_metrics(summary: dict, prefix: str = "eval") -> dict[str, float]:
    """Scalar metrics for loggers: clean, every row, the worst cases and whether the headline is reliable."""
    m: dict[str, float] = {}

    def put(k: str, v: Optional[float]) -> None:
        if v is not None:
            m[f"{prefix}/{k}"] = float(v)

    put("clean_acc", summary["clean"].get("without"))
    put("clean_acc_reversed", summary["clean"].get("with"))
    for r in summary.get("rows", []):
        t = f"{r['threat']}_{r['eps_label'].replace('/', '_')}"
        name = r["key"].split("|")[-1]
        put(f"{t}/{name}_acc", r["without"])
        put(f"{t}/{name}_acc_reversed", r["with"])
        put(f"{t}/{name}_acc_reversed_mean", r.get("with_mean"))
        put(f"{t}/{name}_acc_reversed_first", r.get("with_first"))
        put(f"{t}/{name}_n", r.get("n"))
        for side, suffix in (("without", "acc"), ("with", "acc_reversed")):
            ci = r.get(f"ci_{side}") or (None, None)
            put(f"{t}/{name}_{suffix}_lo", ci[0])
            put(f"{t}/{name}_{suffix}_hi", ci[1])
    for w in summary.get("worst_case", []):
        t = f"{w['threat']}_{w['eps_label'].replace('/', '_')}"
        put(f"{t}/robust_acc", w["without"])
        put(f"{t}/robust_acc_reversed", w["with"])
        put(f"{t}/robust_n", w.get("n"))
        for side, name in (("without", "robust_acc"), ("with", "robust_acc_reversed")):
            ci = w.get(f"ci_{side}") or (None, None)
            put(f"{t}/{name}_lo", ci[0])
            put(f"{t}/{name}_hi", ci[1])
        g = w.get("gain") or {}
        for k in ("gain", "lo", "hi", "p_mcnemar"):
            put(f"{t}/reversal_gain" + ("" if k == "gain" else f"_{k}"), g.get(k))
    put("clean_draw_disagreement", summary["clean"].get("with_disagreement"))
    put("sanity_failed", float(len(failed_checks(summary))))
    put("headline_reliable", float(summary.get("reliable", True)))
    return m


__all__ = [
    "markdown_table",
    "markdown_report",
    "write_report",
    "plot_eps",
    "plot_reversal_steps",
    "flat_metrics",
    "failed_checks",
    "pyplot",
    "save_figure",
]
