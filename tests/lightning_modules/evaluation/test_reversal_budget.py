"""Each row's reversal gets its threat model's budget: an L2 reversal on L2 rows, against a manual reference."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lightning_modules.attacks.core import pgd
from lightning_modules.defense import DefendedModel
from lightning_modules.evaluation import RobustEvaluator
from tests.lightning_modules.evaluation.flat import flat_config
from tests.lightning_modules.toy_defense import toy_data, toy_fns

QUIET = dict(composition=[], eps_sweep=[], attack_steps_sweep=[], eot_sweep=[], reversal_steps_sweep=[], progress=False)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_defense_for_threat_sets_the_reversal_budget():
    fns = toy_fns(steps=2)
    d = fns
    assert d.for_threat("Linf", 8 / 255) is d and d.for_threat("", 0.0) is d  # same norm / clean: as configured
    l2 = d.for_threat("L2", 0.5)
    assert l2.cfg.norm == "L2" and l2.cfg.eps == pytest.approx(1.0) and l2 is d.for_threat("L2", 0.5)
    d = DefendedModel(fns.classifier, fns.head, dataclasses.replace(fns.cfg, budget_factor=2.0), views=fns.views)
    assert d.for_threat("Linf", 4 / 255).cfg.eps == pytest.approx(8 / 255)
    plain = DefendedModel.of(fns.model_fn, fns.reverse)  # given as callables: nothing to re-budget
    assert plain.for_threat("L2", 0.5) is plain


@pytest.mark.parametrize("per_threat", [True, False])
def test_l2_rows_are_reversed_in_l2(per_threat):
    fns = toy_fns(steps=3)
    x, y = toy_data(8)
    cfg = flat_config(
        threat_models={"L2": 0.5}, attacks=["pgd"], steps=3, draws=1, reversal_per_threat=per_threat, **QUIET
    )
    ev = RobustEvaluator(fns, cfg)
    idx = torch.arange(8)
    ev.evaluate_batch(x, y, idx)
    row = next(r for r in ev.catalog() if r.attack == "pgd")
    # manual reference: the same attack (same seed), then the reversal with the L2 budget (or the configured one)
    ev._seed(row.key, idx)
    x_adv = pgd(fns.model_fn, x, y, 0.5, 0.5 * cfg.attack.step_size, 3, norm="L2")
    want = fns.for_threat("L2", 0.5) if per_threat else fns
    assert want.cfg.norm == ("L2" if per_threat else "Linf")
    x_rev = want.reverse(x_adv)
    ok = fns.model_fn(x_rev).argmax(1) == y
    assert [ev.store.rows[f"{row.key}|with"][i] for i in range(8)] == [int(v) for v in ok]
