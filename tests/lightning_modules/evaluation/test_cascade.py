"""The cascade (AutoAttack's rule): rows on the defense at the main budget attack only the examples still
robust, and the headline equals the full evaluation's on the same examples and seeds.

The toy makes that equality exact: a 2-class linear classifier (PGD ends in the same corner of the ball
from any start) and a deterministic per-image reversal that is monotone along the attack's path, so an
example's verdict in a row depends neither on its batch-mates nor on the random start."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.defense import DefendedModel
from lightning_modules.evaluation import RobustEvaluator
from lightning_modules.evaluation.report import markdown_table
from lightning_modules.evaluation.summary import worst_case
from tests.lightning_modules.evaluation.flat import flat_config

pytestmark = pytest.mark.usefixtures("one_thread")

gen = torch.Generator().manual_seed(0)
W, W2 = torch.randn(48, generator=gen), torch.randn(48, generator=gen)
W2 = 0.5 * W + W2  # the surrogate: a correlated model


def linear(w: torch.Tensor):
    def f(x: torch.Tensor) -> torch.Tensor:
        s = (x.flatten(1) - 0.5) @ w
        return torch.stack([-s, s], 1)

    return f


def shift(x: torch.Tensor) -> torch.Tensor:
    """The "reversal": every pixel 4/255 towards class 1 (monotone, per image, deterministic)."""
    return (x + 4 / 255 * W.sign().view(1, 3, 4, 4)).clamp(0, 1)


def data(n: int = 48):
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(n, 3, 4, 4, generator=gen)
    s = (x.flatten(1) - 0.5) @ W
    x = x + (0.25 * s.sign() * W.sign().view(1, -1) * torch.rand(n, 1, generator=gen)).view(n, 3, 4, 4) / 48**0.5
    x = x.clamp(0, 1)
    y = ((x.flatten(1) - 0.5) @ W > 0).long()
    y[:4] = 1 - y[:4]  # a few misclassified
    y[4:12] = 1  # more of class 1, which the reversal helps
    return x, y


def evaluate(cascade: bool, **changes):
    settings = dict(
        threat_models={"Linf": "8/255"},
        attacks=["pgd", "bpda_eot", "transfer"],
        steps=12,
        eot=1,
        draws=3,
        judge_draws=1,
        composition=["batch2"],
        eps_sweep=[],
        attack_steps_sweep=[],
        eot_sweep=[],
        reversal_steps_sweep=[],
        sanity_checks=False,
        progress=False,
    )
    cfg = flat_config(**{**settings, **changes, "cascade": cascade})
    ev = RobustEvaluator(DefendedModel.of(linear(W), shift, surrogate_fn=linear(W2)), cfg)
    x, y = data()
    return ev, ev.evaluate(x, y, batch_size=12)


def test_cascade_headline_equals_the_full_evaluation():
    ev_full, full = evaluate(False)
    ev, cheap = evaluate(True)
    f, c = full["worst_case"][0], cheap["worst_case"][0]
    assert (c["without"], c["with"], c["n"]) == (f["without"], f["with"], f["n"]) and f["n"] == 48
    assert 0.1 < f["with"] < 0.9 and 0.1 < f["without"] < 0.9  # not a trivial headline
    g = f["gain"]  # and examples robust on one side only (the cascade must keep those too)
    assert (c["gain"]["gain"], c["gain"]["p_mcnemar"]) == (g["gain"], g["p_mcnemar"]) and g["gain"] != 0
    rows = {r["attack"]: r for r in cheap["rows"]}
    assert rows["pgd"]["n"] == 48 and not rows["pgd"]["cascade"]  # rows on the classifier stay full
    assert rows["bpda_eot"]["cascade"] and rows["bpda_eot"]["n"] < 48  # the rest: the still-robust only
    assert rows["transfer"]["n"] <= rows["bpda_eot"]["n"]
    # draws stop after a wrong one: the first draw's accuracy is reported instead of the mean over draws
    assert rows["pgd"]["with_first"] is not None and rows["pgd"]["with_mean"] is None
    assert full["rows"][0].get("with_first") is None and full["rows"][0]["with_mean"] is not None
    assert "(on the examples still robust)" in markdown_table(cheap)


def test_an_unfinished_cascaded_row_leaves_its_robust_examples_out():
    ev, s = evaluate(True)
    row = next(r for r in ev.catalog() if r.attack == "transfer")
    ids = list(ev.store.rows[f"{row.key}|with"])
    robust = [i for i in ids if all(ev.store.robust(f"{r.key}|with", i) for r in ev.catalog() if r.group != "sanity")]
    assert robust, "the toy needs an example robust on every row"
    for col in row.columns:
        del ev.store.rows[f"{row.key}|{col}"][robust[0]]
    w = worst_case(ev.store, ev.catalog(), "Linf", 8 / 255)
    assert w["n_with"] == s["worst_case"][0]["n_with"] - 1  # left out, not counted as broken or robust


def test_a_partial_row_does_not_narrow_the_cascaded_headline():
    changes = dict(attacks=["pgd", "bpda_eot", "square"], draws=2, composition=[], sanity_checks=True)
    _, s = evaluate(True, square_queries=5, square_n=12, **changes)
    square = next(r for r in s["rows"] if r["attack"] == "square")
    assert square["cascade"] and square["n"] <= 12
    assert s["worst_case"][0]["n"] == 48  # Square's 12-image subset does not narrow the headline
    check = next(c for c in s["sanity"] if "adaptive attacks at least as strong" in c["name"])
    assert check["passed"] is None and "cascade" in check["detail"]  # conditional accuracies are not compared


def test_sweeps_of_an_attack_on_the_defense_run_on_the_main_rows_survivors():
    changes = dict(attack_steps_sweep=[6], steps_sweep_attacks=["pgd", "bpda_eot"], eot_sweep=[2], steps_sweep_n=36)
    changes["attacks"] = ["pgd", "cw", "bpda_eot"]
    _, full = evaluate(False, **changes)
    ev, cheap = evaluate(True, **changes)
    f, c = full["worst_case"][0], cheap["worst_case"][0]
    assert (c["without"], c["with"], c["n"]) == (f["without"], f["with"], f["n"]) and f["n"] == 48
    cw = next(r for r in cheap["rows"] if r["attack"] == "cw")  # on the classifier, not a reference row
    assert cw["cascade"] and cw["n"] < 48
    rows = [r for r in ev.catalog() if r.group in ("steps-sweep", "eot-sweep")]
    pgd_rows = [r for r in rows if r.attack == "pgd"]
    assert pgd_rows and not any(r.cascade for r in pgd_rows)  # PGD on the classifier: whole
    assert all(len(ev.store.rows[f"{r.key}|without"]) == 36 for r in pgd_rows)
    mine = [r for r in rows if r.attack == "bpda_eot"]
    assert len(mine) == 4 and all(r.cascade for r in mine)  # steps 6, 12 and EOT 1, 2
    ids = {tuple(sorted(ev.store.rows[f"{r.key}|with"])) for r in mine}
    assert len(ids) == 1  # one set of examples for every setting: their accuracies compare
    main = next(r for r in ev.catalog() if r.group == "main" and r.attack == "bpda_eot")
    assert set(next(iter(ids))) <= set(ev.store.rows[f"{main.key}|with"]) and len(next(iter(ids))) < 36
