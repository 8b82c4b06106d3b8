"""The pyautoattack wrappers: same result as calling pyautoattack directly, fp32, no parameter
gradients left behind, L-inf and L2."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from lightning_modules.attacks.autoattack import AutoAttackSpeed, apgd, autoattack, plain_autoattack
from lightning_modules.attacks.core import frozen_params

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only add overhead


def linear_model(seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10)).eval()
    x = torch.rand(8, 3, 8, 8)
    with torch.no_grad():
        y = net(x).argmax(1)  # every point starts correct
    return net, x, y


def test_autoattack_wrapper_matches_pyautoattack_standard():
    """At eps 0.005 APGD-CE and APGD-T each break a point and FAB-T and Square run on the rest:
    the whole standard ensemble runs, and the wrapper returns pyautoattack's own result."""
    from pyautoattack import AutoAttack

    net, x, y = linear_model()
    with frozen_params(net):
        ours = autoattack(net, x, y, eps=0.005, norm="Linf", seed=0)
    assert all(p.grad is None for p in net.parameters()) and all(p.requires_grad for p in net.parameters())
    ref_attack = AutoAttack(net, norm="Linf", eps=0.005, seed=0, version="standard")
    ref_attack.logger.setLevel(logging.WARNING)
    ref, _ = ref_attack.run_standard_evaluation(x, y, batch_size=8)
    assert ref_attack.attacks_to_run == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert torch.equal(ours, ref)
    correct = net(ours).argmax(1) == y
    assert 0 < correct.sum() < len(y)  # some broken, some robust: a real comparison
    assert (ours - x).abs().max() <= 0.005 + 1e-6
    # FAB back-propagates into the parameters: why the evaluation freezes them
    assert any(p.grad is not None for p in net.parameters())


def test_autoattack_l2_and_input_checks():
    net, x, y = linear_model(1)
    x_adv = autoattack(net, x, y, eps=1.0, norm="L2", seed=0)
    assert (x_adv - x).flatten(1).norm(dim=1).max() <= 1.0 + 1e-5
    assert (net(x_adv).argmax(1) != y).all()
    with pytest.raises(ValueError, match="'L3'"):
        autoattack(net, x, y, eps=0.5, norm="L3")
    with pytest.raises(ValueError, match="larger than the whole"):
        autoattack(net, x, y, eps=8, norm="Linf")


def test_apgd_wrapper_matches_apgd_and_runs_in_fp32():
    from pyautoattack.autopgd_base import APGDAttack

    net, x, y = linear_model(2)
    ours = apgd(net, x, y, eps=0.01, norm="Linf", steps=20, seed=3)
    ref = APGDAttack(net, n_iter=20, norm="Linf", n_restarts=1, eps=0.01, seed=3, loss="ce", device=x.device)
    assert torch.equal(ours, ref.perturb(x, y))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # an outer autocast must not leak into the attack
        again = apgd(net, x, y, eps=0.01, norm="Linf", steps=20, seed=3)
    assert torch.equal(again, ours) and again.dtype == torch.float32
    with pytest.raises(ValueError, match="'ce' or 'dlr'"):
        apgd(net, x, y, loss="cw")


def test_channels_last_model_and_input_run_the_whole_ensemble():
    """pyautoattack views input gradients; a channels-last input (fast_recipe.yaml's ``channels_last``, which
    ``_prep`` applies) gave channels-last gradients there, which ``view`` refuses, in APGD-T."""
    from lightning_modules.nn.backbones import build_backbone

    torch.manual_seed(0)
    net = build_backbone("small_cnn", width=4).eval().to(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y = net(x)[0].argmax(1)  # both correct; at 0.5/255 APGD-CE leaves them to APGD-T and the rest
    x_adv = autoattack(net, x, y, eps=0.5 / 255, norm="Linf", seed=0)
    assert x_adv.shape == x.shape and (x_adv - x).abs().max() <= 0.5 / 255 + 1e-6


def test_speed_settings_change_only_the_batching():
    """Batched alike, the tuned call returns pyautoattack's plain result exactly; batched otherwise, the
    random starts differ but every verdict on this linear model (where APGD finds the optimum) agrees."""
    net, x, y = linear_model(3)
    plain4 = plain_autoattack(net, x, y, eps=0.005, batch_size=4)  # two batches, as 250 does on 500 images
    assert torch.equal(autoattack(net, x, y, eps=0.005, speed=AutoAttackSpeed(batch_size=4)), plain4)
    whole = autoattack(net, x, y, eps=0.005)  # default: one batch
    assert (whole - x).abs().max() <= 0.005 + 1e-6
    with torch.no_grad():
        robust_plain, robust_whole = net(plain4).argmax(1) == y, net(whole).argmax(1) == y
    assert 0 < robust_plain.sum() < len(y) and torch.equal(robust_plain, robust_whole)


class _WithFeatures(torch.nn.Module):
    """``x -> (logits, features)`` around a linear model, like the package's classifiers."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(x), x.flatten(1)


def test_plain_reference_takes_a_features_model_and_channels_last_changes_nothing():
    """(logits, features) models are reduced to their logits; channels-last inputs give the same result."""
    net, x, y = linear_model(3)
    plain = plain_autoattack(_WithFeatures(net), x, y, eps=0.005, batch_size=8)
    assert torch.equal(plain, plain_autoattack(net, x, y, eps=0.005, batch_size=8))
    fast = autoattack(_WithFeatures(net), x, y, eps=0.005, speed=AutoAttackSpeed(channels_last=True))
    assert torch.equal(fast, plain) and fast.is_contiguous()


def test_speed_rejects_a_bad_batch():
    for bad in (0, -3, True):
        with pytest.raises(ValueError, match="AutoAttackSpeed.batch_size"):
            AutoAttackSpeed(batch_size=bad)


@pytest.mark.skipif(
    os.environ.get("SSL_REVERSAL_SLOW_TESTS") != "1",
    reason="torch.compile takes minutes on a 2-core CPU; set SSL_REVERSAL_SLOW_TESTS=1 to run",
)
def test_compiled_autoattack_gives_the_same_verdicts():
    net, x, y = linear_model(3)
    plain = plain_autoattack(net, x, y, eps=0.005, batch_size=8)
    compiled = autoattack(net, x, y, eps=0.005, speed=AutoAttackSpeed(compile=True))
    with torch.no_grad():
        assert torch.equal(net(plain).argmax(1) == y, net(compiled).argmax(1) == y)


def record_autoattacks(monkeypatch) -> list:
    """The pyautoattack ``AutoAttack`` objects built from now on, in order."""
    import pyautoattack

    made = []

    class Recording(pyautoattack.AutoAttack):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    monkeypatch.setattr(pyautoattack, "AutoAttack", Recording)
    return made


def test_a_subset_of_attacks_keeps_the_standard_settings(monkeypatch):
    """``attacks=("apgd-ce",)`` runs APGD-CE as standard AutoAttack does (1 restart, 100 steps), not
    pyautoattack's "custom" defaults (5 restarts); the result equals APGD-CE-100 alone."""
    made = record_autoattacks(monkeypatch)
    net, x, y = linear_model(1)
    sub = autoattack(net, x, y, eps=0.005, attacks=("apgd-ce",))
    (aa,) = made
    assert aa.attacks_to_run == ["apgd-ce"] and aa.apgd.n_restarts == 1 and aa.apgd.n_iter == 100
    assert torch.equal(sub, apgd(net, x, y, eps=0.005, steps=100, restarts=1, loss="ce", seed=0))
    with pytest.raises(ValueError, match="subset of"):
        autoattack(net, x, y, eps=0.005, attacks=("apgd-ce", "pgd"))


def test_mao2021_ensemble_is_apgd_ce_and_untargeted_fab_with_two_restarts(monkeypatch):
    """Their "AutoAttack" (APGD-CE + FAB, 2 restarts each) equals pyautoattack set up that way by hand."""
    import pyautoattack

    made = record_autoattacks(monkeypatch)
    net, x, y = linear_model(2)
    ours = autoattack(net, x, y, eps=0.006, seed=0, attacks=("apgd-ce", "fab"), restarts=2)
    (aa,) = made
    assert aa.attacks_to_run == ["apgd-ce", "fab"] and (aa.apgd.n_restarts, aa.fab.n_restarts) == (2, 2)
    assert aa.fab.targeted is False  # untargeted FAB ran
    ref = pyautoattack.AutoAttack(net, norm="Linf", eps=0.006, seed=0, version="standard")
    ref.attacks_to_run, ref.apgd.n_restarts, ref.fab.n_restarts, ref.verbose = ["apgd-ce", "fab"], 2, 2, False
    expected, _ = ref.run_standard_evaluation(x, y, batch_size=len(x))
    assert torch.equal(ours, expected)
    assert (net(ours).argmax(1) != y).any()  # it broke something: a real comparison
    with pytest.raises(ValueError, match="restarts must be >= 1"):
        autoattack(net, x, y, eps=0.006, attacks=("fab",), restarts=0)
