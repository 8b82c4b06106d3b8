"""The attack registry: every entry crafts inside its budget on the toy defense, labels and row keys
are distinct, attacks on the whole defense keep their best iterate, and APGD + EOT breaks a
randomized defense that single-draw PGD does not."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.defense import DefendedModel
from lightning_modules.evaluation import ATTACKS, EvalConfig, Job, RobustEvaluator
from lightning_modules.evaluation.best_iterate import BestIterate, pick_best
from lightning_modules.evaluation.registry import SETTINGS, main_setting, validate
from tests.lightning_modules.evaluation.flat import flat_config
from tests.lightning_modules.evaluation.toys import PhaseDefense
from tests.lightning_modules.toy_defense import toy_data, toy_fns

QUIET = dict(composition=[], eps_sweep=[], attack_steps_sweep=[], eot_sweep=[], reversal_steps_sweep=[], progress=False)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_entries_are_complete_and_their_rows_distinct():
    cfg = validate(EvalConfig())
    keys = set()
    for name, a in ATTACKS.items():
        assert a.name == name and a.kind in ("adaptive", "non-adaptive") and set(a.norms) <= {"Linf", "L2"}
        assert a.steps is None or (SETTINGS[a.steps] and main_setting(cfg, name) >= 1)
        for v in a.variants(cfg):
            keys.add(a.ident(cfg, v))
            assert a.label(cfg, v)
    assert len(keys) == sum(len(a.variants(cfg)) for a in ATTACKS.values())
    assert all(a.steps for a in ATTACKS.values() if a.eot)  # every EOT attack can also be swept in its steps
    changed = cfg.replace("attack.eot", 40)  # a setting that changes a result changes the row's key
    assert ATTACKS["apgd_ce_bpda"].ident(changed, {}) != ATTACKS["apgd_ce_bpda"].ident(cfg, {})


@pytest.mark.parametrize("norm,eps", [("Linf", 8 / 255), ("L2", 0.5)])
def test_every_attack_stays_in_its_ball(norm, eps):
    fns = toy_fns(steps=2)
    x, y = toy_data(6)
    cfg = flat_config(
        threat_models={norm: eps},
        steps=2,
        apgd_steps=3,
        adaptive_steps=2,
        eot=1,
        square_queries=5,
        full_gradient_steps=1,
        judge_draws=1,
        apgd_targets=1,
        **QUIET,
    )
    d = fns
    d.surrogate_fn = fns.model_fn
    for name, a in ATTACKS.items():
        if name == "apgd_dlrt_bpda" or name == "apgd_dlrt_full":
            continue  # targeted DLR needs >= 4 classes; the toy has 2 (tested below on a 4-class toy)
        x_adv = a.craft(Job(x, y, norm, eps, cfg, d, a.variants(cfg)[0], seed=0))
        delta = (x_adv - x).flatten(1)
        size = delta.abs().amax(1) if norm == "Linf" else delta.norm(dim=1)
        assert x_adv.shape == x.shape and size.max() <= eps + 1e-5, name
        assert 0 <= x_adv.min() and x_adv.max() <= 1, name


def test_apgd_with_eot_breaks_what_single_draw_pgd_does_not():
    """The phase toy: one draw's gradient is noise along u; the EOT average finds c."""
    toy = PhaseDefense()
    x, y = toy.data(16)
    d = DefendedModel.of(toy.model_fn, toy.reverse_fn)
    base = dict(threat_models={"Linf": "8/255"}, draws=5, adaptive_steps=20, apgd_steps=30, apgd_targets=2, **QUIET)
    single = RobustEvaluator(d, flat_config(attacks=["bpda_eot"], eot=1, **base)).evaluate(x, y, 16)
    eot = RobustEvaluator(d, flat_config(attacks=["apgd_ce_bpda", "apgd_dlrt_bpda"], eot=20, **base)).evaluate(x, y, 16)
    assert single["clean"]["with"] == 1.0
    assert single["rows"][0]["with"] >= 0.75, single["rows"]
    for r in eot["rows"]:
        assert r["with"] <= 0.1, r
    assert eot["worst_case"][0]["with"] <= 0.1


def test_best_iterate_is_kept_not_the_last():
    """An attack whose last iterate is harmless but an earlier one fooled every draw returns the earlier one."""
    y = torch.zeros(3, dtype=torch.long)
    t = BestIterate(torch.zeros(3, 1), y)
    fool, keep = torch.tensor([[0.0, 1.0]] * 3), torch.tensor([[1.0, 0.0]] * 3)
    t.observe(torch.full((3, 1), 1.0), keep)
    t.observe(torch.full((3, 1), 2.0), fool)  # iterate 2 fools on both draws
    t.observe(torch.full((3, 1), 2.0), fool)
    t.observe(torch.full((3, 1), 3.0), fool)  # iterate 3 fools on one draw of two
    t.observe(torch.full((3, 1), 3.0), keep)
    t.observe(torch.full((3, 1), 4.0), keep)  # the last iterate: harmless
    assert t.result().flatten().tolist() == [2.0, 2.0, 2.0]
    assert t.score.tolist() == [1.0, 1.0, 1.0]
    # pick_best judges candidates on fresh draws of the defense
    defended = lambda xa: torch.where(xa > 1.5, 1.0, 0.0) * torch.tensor([[-1.0, 1.0]]) + torch.tensor([[0.5, 0.0]])  # noqa: E731
    best = pick_best([torch.ones(3, 1), torch.full((3, 1), 2.0)], defended, y, draws=2)
    assert best.flatten().tolist() == [2.0, 2.0, 2.0]
