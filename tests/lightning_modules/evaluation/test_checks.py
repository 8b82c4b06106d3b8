"""The sanity checks as pure functions over the summary: hand-made per-example results that break
each rule make its check fail, and a failed check marks the headline unreliable in every output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightning_modules.defense import DefendedModel
from lightning_modules.evaluation import RobustEvaluator
from lightning_modules.evaluation.checks import tolerance
from lightning_modules.evaluation.report import flat_metrics, markdown_report, write_report
from tests.lightning_modules.evaluation.flat import flat_config

N = 20
ONES, ZEROS, HALF = [1] * N, [0] * N, [1] * 10 + [0] * 10


def evaluator(**kw) -> RobustEvaluator:
    cfg = flat_config(
        **{
            **dict(
                threat_models={"Linf": "8/255"},
                attacks=["pgd", "bpda_eot", "transfer"],
                draws=1,
                composition=[],
                eps_sweep=["0/255", "64/255"],
                eps_sweep_attacks=["pgd"],
                attack_steps_sweep=[5, 50],
                steps_sweep_attacks=["pgd"],
                eot_sweep=[],
                reversal_steps_sweep=[],
                standard_model=True,
                noise_tolerance=0.05,
                progress=False,
                steps=20,
            ),
            **kw,
        }
    )
    f = lambda x: x  # noqa: E731  (never called: the store is filled by hand)
    return RobustEvaluator(DefendedModel.of(f, f, f, reverse_diff_fn=f, surrogate_fn=f), cfg)


def fill(ev: RobustEvaluator, attack: str, group: str, without: list, with_=None, setting=None) -> None:
    row = next(
        r for r in ev.catalog() if r.attack == attack and r.group == group and (setting is None or r.setting == setting)
    )
    ev.store.add(f"{row.key}|without", range(N), without)
    if with_ is not None and "with" in row.columns:
        ev.store.add(f"{row.key}|with", range(N), [v * ev.cfg.scoring.draws for v in with_], draws=ev.cfg.scoring.draws)


def test_checks_pass_on_a_sound_evaluation_and_fail_on_each_broken_rule():
    ev = evaluator(draws=3)
    ev.store.add("clean|without", range(N), ONES)
    ev.store.add("clean|with", range(N), [3] * N, draws=3)
    fill(ev, "pgd", "main", ZEROS, HALF)
    fill(ev, "bpda_eot", "main", ZEROS, ZEROS)
    fill(ev, "transfer", "main", HALF, HALF)
    fill(ev, "pgd", "eps-sweep", ZEROS, ZEROS)
    fill(ev, "pgd", "steps-sweep", HALF, HALF, setting=5)
    fill(ev, "pgd", "steps-sweep", ZEROS, ZEROS, setting=20)
    fill(ev, "pgd", "steps-sweep", ZEROS, ZEROS, setting=50)
    fill(ev, "pgd", "sanity", ZEROS)
    s = ev.summary()
    assert all(c["passed"] is not False for c in s["sanity"]), [c for c in s["sanity"] if c["passed"] is False]
    assert s["reliable"] and s["headline"]["Linf 8/255"]["reliable"]
    assert s["worst_case"][0]["with"] == 0.0 and s["worst_case"][0]["without"] == 0.0

    ev = evaluator(draws=1)
    ev.store.add("clean|without", range(N), ONES)
    ev.store.add("clean|with", range(N), ONES)
    fill(ev, "pgd", "main", ZEROS, ZEROS)
    fill(ev, "bpda_eot", "main", HALF, ONES)  # adaptive weaker than non-adaptive
    fill(ev, "transfer", "main", ZEROS, ZEROS)  # transfer stronger than white-box
    fill(ev, "pgd", "eps-sweep", HALF, HALF)  # not ~0 at 64/255
    fill(ev, "pgd", "steps-sweep", ZEROS, ZEROS, setting=5)
    fill(ev, "pgd", "steps-sweep", HALF, HALF, setting=20)  # more steps help the model: rises
    fill(ev, "pgd", "steps-sweep", ZEROS, ZEROS, setting=50)  # and 50 steps beat the main 20: not converged
    fill(ev, "pgd", "sanity", HALF)  # standard model not broken
    s = ev.summary()
    checks = {c["name"]: c["passed"] for c in s["sanity"]}
    assert checks == {
        "eps->large: pgd without reversal at Linf 64/255 ~ 0": False,
        "standard model ~0% under PGD-20 at 8/255": False,
        "Linf 8/255: adaptive attacks at least as strong as non-adaptive (with reversal)": False,
        "Linf 8/255: transfer >= white-box (with reversal)": False,
        "more pgd steps never raise accuracy (without reversal)": False,
        "pgd converged: 50 steps no lower than the main 20": False,
        "randomized defense scored over several draws": False,
    }
    assert not s["reliable"] and s["headline"]["Linf 8/255"]["reliable"] is False


def test_convergence_fails_when_accuracy_is_still_falling_beyond_noise():
    ev = evaluator(noise_tolerance=None, draws=5)
    ev.store.add("clean|without", range(N), ONES)
    fill(ev, "pgd", "steps-sweep", HALF, setting=5)
    fill(ev, "pgd", "steps-sweep", HALF, setting=20)
    fill(ev, "pgd", "steps-sweep", [1] * 9 + [0] * 11, setting=50)  # one example lower: within noise
    checks = {c["name"]: c for c in ev.summary()["sanity"]}
    assert checks["pgd converged: 50 steps no lower than the main 20"]["passed"] is True
    assert tolerance(0.5, N) > 1 / N


def test_a_failed_check_marks_the_headline_unreliable_in_every_output(tmp_path: Path):
    ev = evaluator()
    ev.store.add("clean|without", range(N), ONES)
    ev.store.add("clean|with", range(N), ONES)
    fill(ev, "pgd", "main", ZEROS, ONES)
    fill(ev, "pgd", "eps-sweep", HALF, HALF)
    s = ev.summary()
    md = markdown_report(s)
    assert "Headline** (worst case per example over every attack, draw and batch composition) — **UNRELIABLE**" in md
    assert "UNRELIABLE: a sanity check failed" in md  # in the table's worst-case row too
    paths = write_report(s, tmp_path)
    back = json.loads(paths["json"].read_text())
    assert back["reliable"] is False and back["headline"]["Linf 8/255"]["reliable"] is False
    assert flat_metrics(s)["eval/headline_reliable"] == 0.0
    assert (tmp_path / "robust_acc_vs_eps.png").is_file()


@pytest.mark.parametrize("draws", [1, 5])
def test_markdown_table_shows_every_row_with_draw_columns(draws):
    ev = evaluator(draws=draws)
    ev.store.add("clean|without", range(N), ONES)
    ev.store.add("clean|with", range(N), [draws] * 10 + [0] * 10, draws=draws)
    fill(ev, "pgd", "main", ZEROS, [1] * 5 + [0] * 15)
    md = markdown_report(ev.summary())
    assert f"With reversal (all {draws} draws)" in md
    assert "| clean | - | - | 100.00% [83.9-100.0%] | 50.00% [29.9-70.1%] | 50.00% | 0.00% | 50.00% |" in md
    # without 0%, with 25%: the worst composition column ANDs the "with" columns only
    pgd = "| Linf 8/255 | PGD-20 (CE) | non-adaptive | 0.00% [0.0-16.1%] | 25.00% [11.2-46.9%] | 25.00% | 0.00% |"
    assert pgd in md


def test_headline_carries_intervals_and_the_paired_gain():
    ev = evaluator(draws=1, attacks=["pgd"], eps_sweep=[], attack_steps_sweep=[])
    ev.store.add("clean|without", range(N), ONES)
    ev.store.add("clean|with", range(N), ONES)
    fill(ev, "pgd", "main", [1] * 4 + [0] * 16, [1] * 14 + [0] * 6)  # 10 examples gained, none lost
    s = ev.summary()
    w = s["worst_case"][0]
    assert (w["without"], w["with"], w["n"]) == (0.2, 0.7, N)
    assert w["ci_without"][0] < 0.2 < w["ci_without"][1] and w["ci_with"][0] < 0.7 < w["ci_with"][1]
    g = w["gain"]
    assert (
        g["n"] == N and g["gain"] == pytest.approx(0.5) and g["lo"] > 0 and g["p_mcnemar"] == pytest.approx(2 / 2**10)
    )
    md = markdown_report(s)
    assert "gain +50.0 points" in md and ": significant at this n" in md
    assert json.loads(json.dumps(s["worst_case"]))[0]["gain"]["verdict"] == g["verdict"]
    m = flat_metrics(s)
    assert m["eval/Linf_8_255/robust_n"] == N and m["eval/Linf_8_255/reversal_gain"] == pytest.approx(0.5)
    assert m["eval/Linf_8_255/robust_acc_lo"] < 0.2 < m["eval/Linf_8_255/robust_acc_hi"]
    assert m["eval/Linf_8_255/reversal_gain_lo"] > 0
    assert any(k.endswith("_n") and v == N for k, v in m.items() if "robust" not in k)
    assert any(k.endswith("_acc_reversed_lo") and v < 0.7 for k, v in m.items())


def test_reversal_steps_plot_draws_wilson_error_bars(tmp_path: Path):
    from lightning_modules.evaluation import report

    calls = []

    class Ax:
        def errorbar(self, xs, ys, yerr, **kw):
            calls.append((list(xs), list(ys), yerr))

    pts = [
        {"setting": 0, "with": 0.25, "ci_with": [0.1, 0.5]},
        {"setting": 40, "with": 0.5, "ci_with": [0.3, 0.7]},
    ]
    report._errorbar(Ax(), [0, 40], pts, "with", "-", "clean")
    xs, ys, (lo, hi) = calls[0]
    assert xs == [0, 40] and ys == [25.0, 50.0]
    assert lo == pytest.approx([15.0, 20.0]) and hi == pytest.approx([25.0, 20.0])
    summary = {"sweeps": {"reversal_steps": [{**p, "attack": "clean", "kind": "non-adaptive"} for p in pts]}}
    assert report.plot_reversal_steps(summary, tmp_path / "steps.png").is_file()
