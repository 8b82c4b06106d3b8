#!/usr/bin/env python
"""Fold a returned GPU run (``results.json`` of ``scripts/gpu_run.py``) into ``docs/results.md``.

The block between the ``gpu-results:start`` and ``gpu-results:end`` markers is rewritten from the JSON alone
(hardware, date, commit, the targets beside what was reached, every number with its command): never by hand.

    python scripts/gpu_results.py --out FOLDER [--doc docs/results.md]   # make gpu-results OUT=FOLDER
    python scripts/gpu_results.py --empty                                # the block before any run
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from lightning_modules.util import atomic_write_text  # noqa: E402

START, END = "<!-- gpu-results:start -->", "<!-- gpu-results:end -->"
NOT_YET = "not measured yet"
BENCH_NAMES = dict(pgd_at="PGD-10 AT", pgd_at_ssl="PGD-10 AT + head", fgsm_rs="FGSM-RS")
BENCH_NAMES.update(reversal="reversal (40 steps x 4 views)", autoattack="AutoAttack (random-init model)")
TF32_NOTE = (
    "The attacks and the reversal run in fp32, their convolutions in TF32 (PyTorch's cuDNN default on this GPU); "
    "training in bf16-mixed."
)
REFERENCE = (
    "Reference runs on an H100 with the same pack (reported runs, not measured here): plain PGD-AT, "
    "30 epochs in 253 s: 77.4% clean / 47.3% PGD-20 / 42.3% AutoAttack; tuned plain PyTorch PGD-10 AT "
    "4,425 images/s; a reference-style reversal 150-200 images/s."
)


def _pct(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _rate(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:,.0f} images/s" if v >= 100 else f"{v:.3g} images/s"


def _row(rows: list[dict], attack: str) -> Optional[dict]:
    return next((r for r in rows if r["attack"] == attack), None)


def bench_rate(res: dict, cfg: str, name: str) -> Optional[float]:
    """images/s of benchmark ``name`` in bench configuration ``cfg`` (``tuned``, ``fp32``) of a run's results."""
    return (((res.get("bench") or {}).get(cfg) or {}).get("results") or {}).get(name, {}).get("images_per_s")


def targets(res: Optional[dict]) -> list[tuple[str, str, str]]:
    """(target, reached, how) for each target of the project; "not measured yet" where nothing was."""
    res = res or {}
    ev, tr = res.get("eval") or {}, res.get("train") or {}
    aa, clean = _row(ev.get("rows") or [], "autoattack") or {}, (ev.get("clean") or {}).get("without")
    n = f" on {ev.get('n_reached')} images" if ev.get("n_reached") else ""
    trained = f", {tr['wall_s']:.0f} s of `fit` ({tr.get('global_step')} steps)" if tr.get("wall_s") else ""
    tuned = "bench, tuned settings"
    aa_how = "aa_speed: standard AutoAttack, the package's settings vs pyautoattack called plainly"

    def got(v: Any, fmt, more: str = "") -> str:
        return NOT_YET if v is None else fmt(v) + more

    aa_got = got(aa.get("without"), _pct, f" on {aa.get('n')} images")
    return [
        (">= 11,000 images/s PGD-10 AT (one H100-class GPU)", got(bench_rate(res, "tuned", "pgd_at"), _rate), tuned),
        (">= 1,000 images/s reversal (40 steps x 4 views)", got(bench_rate(res, "tuned", "reversal"), _rate), tuned),
        (">= 80% clean, fast recipe, <= 5 min of training", got(clean, _pct, n + trained), "eval after train"),
        (">= 46% AutoAttack (first 1,000 test images), same run", aa_got, "eval: standard AutoAttack"),
        (">= 3x the speed of pyautoattack called plainly, same robust accuracy", _aa_speed(res), aa_how),
    ]


def _aa_speed(res: dict) -> str:
    sp = res.get("aa_speed") or {}
    t, p = sp.get("tuned") or {}, sp.get("plain") or {}
    if not t:
        return NOT_YET
    if not p.get("seconds"):
        return f"{NOT_YET} (the tuned call ran {_rate(t['images_per_s'])}; plain: {p.get('skipped', 'not run')})"
    return (
        f"{sp['speedup']:.2f}x ({_rate(t['images_per_s'])} vs {_rate(p['images_per_s'])}); robust "
        f"{_pct(t['robust_acc'])} vs {_pct(p['robust_acc'])} on the same {sp['n']} images, "
        f"{sp['verdicts_differ']} verdicts differ"
    )


def render(res: Optional[dict]) -> str:
    """The Markdown of the block (without the markers)."""
    lines = ["### Results of the GPU run", ""]
    if not res:
        lines += ["No GPU run has been folded in yet: every target below is **not measured yet**.", ""]
    else:
        m = res["meta"]
        if m.get("tiny"):
            kind = "**tiny CPU smoke run** (small CNN, synthetic data): checks the pipeline, measures no target"
        elif m.get("device") != "cuda":
            kind = "**full-size pipeline on the CPU** (budgets, sizes, attacks as its argv says): measures no target"
        else:
            kind = "Full run"
        lines += [
            f"{kind}. Hardware: {m.get('device_name')}; torch {m.get('torch')}, Python {m.get('python')}; "
            f"{m.get('date')}; commit `{m.get('commit')}`{' (uncommitted changes)' if m.get('dirty') else ''}; "
            f"`{m.get('command')}`, {m.get('wall_s')} s in all.",
            "",
        ]
        if m.get("tf32_convolutions"):
            lines += [TF32_NOTE, ""]
        v = (res.get("setup") or {}).get("versions") or {}
        if v:
            lines += ["Packages: " + ", ".join(f"{k} {val or 'absent'}" for k, val in v.items()) + ".", ""]
    lines += ["| target | reached | how |", "|---|---|---|"]
    lines += [f"| {t} | {r} | {h} |" for t, r, h in targets(res)]
    lines += ["", REFERENCE]
    if not res:
        return "\n".join(lines)
    cmd = f"`{res['meta'].get('command')}`"
    lines += ["", "| stage | status | wall | budget |", "|---|---|---:|---:|"]
    for name, st in res.get("stages", {}).items():
        err = f" ({st['error']})" if st.get("error") else ""
        lines.append(f"| {name} | {st.get('status')}{err} | {st.get('wall_s')} s | {st.get('budget_s')} s |")
    lines += ["", "| measurement | number | command |", "|---|---|---|"]
    for cfg, rec in (res.get("bench") or {}).items():
        if not isinstance(rec, dict):
            continue
        for name, r in (rec.get("results") or {}).items():
            ratio = f" ({r['ratio_to_floor']:.3f} of the FLOP floor)" if r.get("ratio_to_floor") else ""
            label = f"reversal ({r['setting']})" if r.get("setting") else BENCH_NAMES.get(name, name)
            lines.append(f"| bench {cfg}: {label} | {_rate(r['images_per_s'])}{ratio} | `{rec['command']}` |")
    tr = res.get("train") or {}
    if tr:
        cut = ", stopped by max_time" if tr.get("stopped_by_max_time") else ""
        row = f"| training (fast recipe) | {tr.get('epochs_planned')} epochs planned, {tr.get('global_step')} steps, "
        row += f"{tr.get('wall_s')} s wall (max_time {tr.get('max_time_s')} s{cut}) | "
        lines.append(row + f"`{tr.get('command')}` |")
    for stage in ("eval", "adaptive"):
        ev = res.get(stage) or {}
        if not ev:
            continue
        how = f"{cmd}, stage {stage}: {ev.get('n_reached')} of {ev.get('n_requested')} images, "
        how += f"batch {ev.get('batch_size')}, {ev.get('draws')} draws{', cut at its budget' if ev.get('cut') else ''}"
        if stage == "eval":
            c = ev.get("clean") or {}
            clean = f"| clean (without / with reversal) | {_pct(c.get('without'))} / {_pct(c.get('with'))}"
            lines.append(f"{clean} | {how} |")
        for r in ev.get("rows") or []:
            row = f"| {r['label']} L-inf 8/255 (without / with reversal) | {_pct(r['without'])} / {_pct(r['with'])}"
            lines.append(f"{row} on {r['n']} images, {r['time_s']:.0f} s | {how} |")
        unreliable = "" if ev.get("reliable") else " (UNRELIABLE: a sanity check failed)"
        for w in ev.get("worst_case") or []:
            row = f"| {stage}: worst case per example, {w['threat']} {w['eps_label']} | {_pct(w.get('without'))}"
            lines.append(f"{row} / {_pct(w.get('with'))} on {w.get('n')} images{unreliable} | {how} |")
    tf = res.get("tf32") or {}
    if tf.get("fp32"):
        row = f"| PGD-20 L-inf 8/255, convolutions in TF32 / strict fp32 | {_pct(tf['tf32']['robust_acc'])} / "
        row += f"{_pct(tf['fp32']['robust_acc'])} on {tf['n']} images, {tf['verdicts_differ']} verdicts differ "
        lines.append(row + f"({tf['tf32']['seconds']:.1f} / {tf['fp32']['seconds']:.1f} s) | {cmd}, stage tf32 |")
    sp = res.get("aa_speed") or {}
    for name in ("tuned", "plain"):
        r = sp.get(name) or {}
        if r.get("seconds"):
            row = f"| AutoAttack ({', '.join(sp['attacks'])}) {name}: {r['settings']} | {_rate(r['images_per_s'])}, "
            row += f"robust {_pct(r['robust_acc'])} on {sp['n']} images, {r['seconds']:.1f} s"
            lines.append(f"{row} | {cmd}, stage aa_speed |")
    return "\n".join(lines)


def fold(doc: Path, res: Optional[dict]) -> str:
    """Rewrite the marked block of ``doc`` from ``res``; returns the new text."""
    text = doc.read_text()
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ValueError(f"{doc} needs exactly one block between '{START}' and '{END}'")
    head, rest = text.split(START, 1)
    new = f"{head}{START}\n{render(res)}\n{END}{rest.split(END, 1)[1]}"
    atomic_write_text(doc, new)
    return new


def read_results(folder: Path) -> dict:
    path = Path(folder) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no results.json in {folder}: pass the folder a GPU run returned (make gpu-run writes it to OUT)"
        )
    res = json.loads(path.read_text())
    if res.get("schema") != 1 or "meta" not in res:
        raise ValueError(f"{path} is not a gpu_run results file (schema 1 with 'meta')")
    return res


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="the folder a GPU run returned (holds results.json)")
    p.add_argument("--doc", default=str(REPO / "docs" / "results.md"), help="the file holding the block")
    p.add_argument("--empty", action="store_true", help="write the block with nothing measured")
    a = p.parse_args(argv)
    if not a.empty and not a.out:
        p.error("give --out FOLDER (or --empty)")
    fold(Path(a.doc), None if a.empty else read_results(Path(a.out)))
    print(f"folded {'nothing' if a.empty else a.out} into {a.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
