"""Scoring a randomized, batch-dependent defense: several draws, draw disagreement, batch compositions."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.defense import DefendedModel
from lightning_modules.evaluation import RobustEvaluator
from tests.lightning_modules.evaluation.flat import flat_config
from tests.lightning_modules.evaluation.toys import CoinFlipDefense, MatesDefense

QUIET = dict(composition=[], eps_sweep=[], attack_steps_sweep=[], eot_sweep=[], reversal_steps_sweep=[], progress=False)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_defense_right_on_half_the_draws_scores_near_zero_with_every_draw_required():
    x, y = CoinFlipDefense.data(400)
    d = DefendedModel.of(CoinFlipDefense.model_fn, CoinFlipDefense.reverse_fn)
    one = RobustEvaluator(d, flat_config(attacks=[], draws=1, **QUIET)).evaluate(x, y, 100)["clean"]
    five = RobustEvaluator(d, flat_config(attacks=[], draws=5, **QUIET)).evaluate(x, y, 100)["clean"]
    assert one["without"] == 1.0 and five["without"] == 1.0
    assert abs(one["with"] - 0.5) < 0.08  # one reversal: the coin
    assert five["with"] < 0.08  # every one of 5 draws: 1/32 expected
    assert abs(five["with_mean"] - 0.5) < 0.05  # the mean over draws is still reported
    assert five["with_disagreement"] > 0.9 and one["with_disagreement"] == 0.0


def test_manual_reference_of_draw_counts():
    """Counts per example equal a slow loop over draws with the same random numbers."""
    x, y = CoinFlipDefense.data(6)
    d = DefendedModel.of(CoinFlipDefense.model_fn, CoinFlipDefense.reverse_fn)
    torch.manual_seed(0)
    counts = d.correct_draws(x, y, draws=4)
    torch.manual_seed(0)
    ref = torch.zeros(6, dtype=torch.long)
    for _ in range(4):
        xr = CoinFlipDefense.reverse_fn(x)
        for i in range(6):
            ref[i] += int(CoinFlipDefense.model_fn(xr[i : i + 1]).argmax(1).item() == y[i].item())
    assert torch.equal(counts, ref)


def test_compositions_reverse_among_the_right_batch_mates():
    x_clean = torch.full((8, 3, 4, 4), 0.3)
    y = torch.zeros(8, dtype=torch.long)
    x_adv = torch.full((8, 3, 4, 4), 0.7)  # every image attacked: the median is attacked too
    d = DefendedModel.of(MatesDefense.model_fn, MatesDefense.reverse_fn)
    assert d.correct_draws(x_adv, y, 1, "batch").sum() == 0
    assert d.correct_draws(x_adv, y, 1, "clean_mates", x_clean, groups=4).sum() == 8  # 2 attacked among 6 clean
    assert d.correct_draws(x_adv, y, 1, "clean_mates", x_clean, groups=2).sum() == 0  # 4 of 8 attacked: too many
    # small batches: one attacked image among 7 clean ones is repaired, beside one clean image it is not
    mixed = torch.cat([x_adv[:1], x_clean[1:]])
    assert d.correct_draws(mixed, y, 1, "batch").sum() == 8
    assert d.correct_draws(mixed, y, 1, "batch2").tolist() == [0, 1, 1, 1, 1, 1, 1, 1]
    assert d.correct_draws(mixed[:5], y[:5], 1, "batch2").tolist() == [0, 1, 1, 1, 1]  # 1-image tail merged


def test_composition_columns_count_in_the_headline():
    x_clean = torch.full((8, 3, 4, 4), 0.3)
    y = torch.zeros(8, dtype=torch.long)
    d = DefendedModel.of(MatesDefense.model_fn, MatesDefense.reverse_fn)
    cfg = flat_config(
        threat_models={"Linf": "8/255"},
        attacks=["pgd"],
        steps=3,
        draws=1,
        **{**QUIET, "composition": ["clean_mates", "batch2"]},
        mates_groups=4,
    )
    s = RobustEvaluator(d, cfg).evaluate(x_clean, y, 8)
    row = s["rows"][0]
    assert {"with", "with@clean_mates", "with@batch2"} <= set(row)
    assert s["worst_case"][0]["with"] <= min(row["with"], row["with@clean_mates"], row["with@batch2"])
    assert s["worst_case"][0]["columns_with"] == 2 + 3  # clean: with, batch2; pgd: with, clean_mates, batch2
