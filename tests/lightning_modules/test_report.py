"""Report files: written atomically, JSON that parses back to the summary, a Markdown table with
every row, the worst case and a loud banner for failed sanity checks, and readable plots."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from lightning_modules.evaluation import EvalConfig, RobustEvaluator
from lightning_modules.report import failed_checks, flat_metrics, markdown_report, markdown_table, write_report
from tests.lightning_modules.toy_defense import toy_data, toy_fns


@pytest.fixture(scope="module")
def summary() -> dict:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = EvalConfig(threat_models={"Linf": "8/255", "L2": 0.5}, attacks=["pgd", "cw"],
                         adaptive=["defense_aware", "transfer"], steps=5, eps_sweep=["0/255", "8/255", "64/255"],
                         eps_sweep_attacks=["pgd", "defense_aware"], attack_steps_sweep=[2, 5],
                         steps_sweep_attacks=["pgd"], reversal_steps_sweep=[0, 6], eps_sweep_n=8, steps_sweep_n=8)
        x, y = toy_data(8)
        return RobustEvaluator.for_reversal(toy_fns(steps=6), cfg).evaluate(x, y)
    finally:
        torch.set_num_threads(n)


def test_write_report_files_parse(summary, tmp_path: Path):
    paths = write_report(summary, tmp_path / "out")
    assert set(paths) == {"json", "markdown", "plot_eps", "plot_reversal_steps"}
    assert json.loads(paths["json"].read_text()) == json.loads(json.dumps(summary))
    for k in ("plot_eps", "plot_reversal_steps"):
        with Image.open(paths[k]) as im:
            assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 150
    assert not [p for p in (tmp_path / "out").iterdir() if "tmp" in p.name]  # atomic: no leftovers
    md = paths["markdown"].read_text()
    assert md == markdown_report(summary)
    for heading in ("## Accuracy vs eps", "## Accuracy vs attack steps", "## Accuracy vs reversal steps",
                    "## Sanity checks"):
        assert heading in md


def test_markdown_table_has_every_row_and_the_worst_case(summary):
    table = markdown_table(summary).splitlines()
    assert table[0] == "| Threat model | Attack | Type | Without reversal | With reversal | n |"
    body = [ln for ln in table[2:]]
    assert body[0].startswith("| clean | none | - | 100.00% | 100.00% | 8 |")
    # 2 threat models x (4 attacks + worst case) + clean
    assert len(body) == 1 + 2 * 5
    pgd = next(r for r in summary["rows"] if r["attack"] == "pgd" and r["threat"] == "Linf")
    assert f"| Linf 8/255 | {pgd['label']} | non-adaptive | {100 * pgd['without']:.2f}% | {100 * pgd['with']:.2f}% | 8 |" in body
    worst = [ln for ln in body if "worst case" in ln]
    assert len(worst) == 2 and worst[0].startswith("| Linf 8/255 |") and worst[1].startswith("| L2 0.5 |")
    w = summary["worst_case"][0]
    assert f"**{100 * w['with']:.2f}%**" in worst[0]


def test_failed_sanity_checks_are_loud(summary):
    bad = json.loads(json.dumps(summary))
    bad["sanity"].append({"name": "made-up check", "passed": False, "detail": "accuracy 50% (must be <= 5%)"})
    n_bad = len(failed_checks(summary)) + 1  # this toy run fails some checks already (weak attacks at L2)
    md = markdown_report(bad)
    assert md.splitlines()[2].startswith(f"> **WARNING: {n_bad} SANITY CHECK(S) FAILED**")
    assert "> - made-up check: accuracy 50% (must be <= 5%)" in md and "- **FAILED**: made-up check" in md
    passing = dict(bad, sanity=[s for s in bad["sanity"] if s["passed"] is not False])
    assert "WARNING" not in markdown_report(passing) and "FAILED" not in markdown_report(passing)
    m = flat_metrics(bad)
    assert m["eval/sanity_failed"] == n_bad and m["eval/clean_acc"] == 1.0
    assert "eval/Linf_8_255/robust_acc_reversed" in m and "eval/L2_0.5/pgd_acc" in m
