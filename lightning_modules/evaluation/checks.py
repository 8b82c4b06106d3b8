"""Sanity checks of an evaluation, as plain functions over its summary (in the spirit of
``autoattack/checks.py`` and Carlini et al. 2019, "On evaluating adversarial robustness").

Each check returns ``{"name", "passed" (True / False / None = not applicable), "detail"}``. A failed
check marks the headline unreliable in every output. Paired comparisons allow for noise: two
binomial standard errors plus one example (``2 sqrt(p(1-p)/n) + 1/n``) unless ``noise_tolerance``.

Example:
    >>> from lightning_modules.evaluation.checks import tolerance
    >>> round(tolerance(0.5, 100), 3)
    0.11
"""

from __future__ import annotations

import math
from typing import Any, Optional

from .config import EvalConfig
from .registry import main_setting

Check = dict[str, Any]


def tolerance(p: Optional[float], n: int, fixed: Optional[float] = None) -> float:
    if fixed is not None:
        return fixed
    if not n:
        return 0.0
    p = 0.5 if p is None else p
    return 2 * math.sqrt(max(p * (1 - p), 0.0) / n) + 1 / n


def _check(name: str, passed: Optional[bool], detail: str) -> Check:
    return {"name": name, "passed": passed, "detail": detail}


def _col(r: dict) -> str:
    """The column an attack is judged on: the defended model for adaptive attacks."""
    return "with" if r["kind"] == "adaptive" and r.get("with") is not None else "without"


def eps_to_zero(summary: dict, cfg: EvalConfig) -> list[Check]:
    """Accuracy goes to ~0 at the largest eps of the sweep (the attacks can reach the data)."""
    rows = summary["sweeps"]["eps"]
    if not rows:
        return [_check("eps->large: accuracy goes to ~0", None, "skipped (no eps sweep)")]
    top = max(r["eps"] for r in rows)
    out = []
    zero = cfg.checks.zero_tolerance
    for r in (r for r in rows if r["eps"] == top):
        col = _col(r)
        name = f"eps->large: {r['attack']} {col} reversal at {r['norm']} {r['eps_label']} ~ 0"
        out.append(_check(name, r[col] <= zero, f"accuracy {r[col]:.2%} (n={r['n']}), must be <= {zero:.0%}"))
    if cfg.sweeps.eps_sweep_norm == "Linf" and top < 32 / 255:
        why = f"largest eps {top * 255:.0f}/255 < 32/255: 'accuracy goes to 0' is not tested"
        out.append(_check("eps->large: the sweep reaches a large eps", False, why))
    return out


def standard_model_broken(summary: dict, cfg: EvalConfig) -> list[Check]:
    """An undefended standard model gets ~0% under PGD-20 at 8/255."""
    if not cfg.checks.standard_model:
        return []
    rows, name, zero = (
        summary["sweeps"]["sanity"],
        "standard model ~0% under PGD-20 at 8/255",
        cfg.checks.zero_tolerance,
    )
    if not rows:
        return [_check(name, None, "not run")]
    a = rows[0]["without"]
    return [_check(name, a <= zero, f"accuracy {a:.2%} (n={rows[0]['n']}), must be <= {zero:.0%}")]


def adaptive_strength(summary: dict, cfg: EvalConfig) -> list[Check]:
    """With the reversal, the strongest adaptive attack is at least as strong as the strongest non-adaptive
    one, and a transfer attack is not stronger than the white-box attacks."""
    out = []
    for norm, eps in cfg.threat_models.items():
        mine = [r for r in summary["rows"] if r["threat"] == norm and r["eps"] == eps and r.get("with") is not None]
        lab = f"{norm} {mine[0]['eps_label']}" if mine else norm
        name = f"{lab}: adaptive attacks at least as strong as non-adaptive (with reversal)"
        if any(r.get("cascade") for r in mine):  # their accuracy is on the still-robust only: not comparable
            why = "not comparable under the cascade (rows on the defense ran on the still-robust examples only)"
            out.append(_check(name, None, why))
            mine = [r for r in mine if not r.get("cascade")]
        wb = [r for r in mine if r["kind"] == "adaptive" and r["attack"] != "transfer"]
        na = [r for r in mine if r["kind"] == "non-adaptive"]
        if wb and na:
            a, b = min(wb, key=lambda r: r["with"]), min(na, key=lambda r: r["with"])
            tol = tolerance(b["with"], min(a["n"], b["n"]), cfg.checks.noise_tolerance)
            why = f"strongest adaptive {a['attack']} {a['with']:.2%} vs non-adaptive {b['attack']} {b['with']:.2%}"
            out.append(_check(name, a["with"] <= b["with"] + tol, f"{why} (tolerance {tol:.2%})"))
        tr = [r for r in mine if r["attack"] == "transfer"]
        if tr and wb:
            t, a = tr[0], min(wb, key=lambda r: r["with"])
            tol = tolerance(a["with"], min(t["n"], a["n"]), cfg.checks.noise_tolerance)
            why = f"transfer {t['with']:.2%} vs {a['attack']} {a['with']:.2%} (tolerance {tol:.2%})"
            out.append(_check(f"{lab}: transfer >= white-box (with reversal)", t["with"] >= a["with"] - tol, why))
    return out


def _converged(name: str, pts: list[dict], main: Optional[dict], what: str, cfg: EvalConfig) -> list[Check]:
    """More iterations never raise accuracy, and the largest setting is not below the main one."""
    if len(pts) < 2 and main is None:
        return []
    col = _col(pts[0])
    pts = [p for p in sorted(pts, key=lambda p: p["setting"]) if p[col] is not None]
    rises = []
    for a, b in zip(pts, pts[1:]):
        tol = tolerance(a[col], min(a["n"], b["n"]), cfg.checks.noise_tolerance)
        if b[col] > a[col] + tol:
            rises.append(f"{a['setting']}->{b['setting']}: {a[col]:.2%} -> {b[col]:.2%} (tolerance {tol:.2%})")
    curve = ", ".join(f"{p['setting']}: {p[col]:.2%}" for p in pts)
    why = "; ".join(rises) if rises else f"accuracy by {what}: {curve}"
    out = [_check(f"more {name} {what} never raise accuracy ({col} reversal)", not rises, why)]
    if main is not None and pts and main.get(col) is not None and pts[-1]["setting"] > main["setting"]:
        top, ref = pts[-1], main["setting"]
        tol = tolerance(main[col], min(main["n"], top["n"]), cfg.checks.noise_tolerance)
        why = f"{ref}: {main[col]:.2%} (main) vs {top['setting']}: {top[col]:.2%} (tolerance {tol:.2%})"
        ok = top[col] >= main[col] - tol
        name = f"{name} converged: {top['setting']} {what} no lower than the main {ref}"
        out.append(_check(name, ok, f"{why}; lower means the main setting is not converged"))
    return out


def convergence(summary: dict, cfg: EvalConfig) -> list[Check]:
    """Steps and EOT sweeps: no rise with more effort, and the largest setting does not beat the main one."""
    out: list[Check] = []
    for group, what, attacks in (
        ("attack_steps", "steps", cfg.sweeps.steps_sweep_attacks),
        ("eot", "EOT draws", cfg.sweeps.eot_sweep_attacks),
    ):
        for name in attacks:
            pts = [r for r in summary["sweeps"][group] if r["attack"] == name]
            if not pts:
                continue
            setting = main_setting(cfg, name) if group == "attack_steps" else cfg.attack.eot
            main = next((p for p in pts if p["setting"] == setting), None)
            out += _converged(name, pts, main, what, cfg)
    return out


def multi_draw(summary: dict, cfg: EvalConfig) -> list[Check]:
    """A randomized defense is scored over several draws."""
    if summary["clean"].get("with") is None:
        return []
    clean = summary["clean"]
    how = (
        "an example wrong on its first draw is not drawn again (cascade)"
        if clean.get("with_first") is not None
        else f"clean draw disagreement {(clean.get('with_disagreement') or 0):.2%}"
    )
    why = f"{cfg.scoring.draws} draw(s) per reversed input; {how}"
    return [_check("randomized defense scored over several draws", cfg.scoring.draws >= 2, why)]


CHECKS = (eps_to_zero, standard_model_broken, adaptive_strength, convergence, multi_draw)


def sanity_checks(summary: dict, cfg: EvalConfig) -> list[Check]:
    return [c for fn in CHECKS for c in fn(summary, cfg)]


def failed_checks(summary: dict) -> list[Check]:
    return [s for s in summary.get("sanity", []) if s["passed"] is False]


__all__ = ["sanity_checks", "failed_checks", "tolerance", "CHECKS"]
