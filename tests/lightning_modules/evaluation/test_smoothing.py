"""Randomized smoothing: the beta quantile and binomial test against scipy, the certified radius of a
linear classifier against its closed form, and certificates that an L2 attack cannot break."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from lightning_modules.evaluation.smoothing import (
    ABSTAIN,
    SmoothingConfig,
    betainc,
    binom_test_two_sided,
    certified_accuracy,
    certify,
    clopper_pearson_lower,
    predict,
    sample_counts,
)


def test_clopper_pearson_matches_scipy():
    cases = [
        (1, 10, 0.05),
        (7, 10, 0.001),
        (99, 100, 0.001),
        (500, 1000, 0.01),
        (87_000, 100_000, 0.001),
        (99_990, 100_000, 0.001),
        (3, 100_000, 0.05),
        (60, 100, 0.2),
    ]
    for k, n, a in cases:
        got = float(clopper_pearson_lower(torch.tensor([k]), n, a)[0])
        ref = stats.beta.ppf(a, k, n - k + 1)
        assert got == pytest.approx(ref, rel=1e-9, abs=1e-12), (k, n, a)
    assert float(clopper_pearson_lower(torch.tensor([0]), 50, 0.01)[0]) == 0.0
    assert float(clopper_pearson_lower(torch.tensor([50]), 50, 0.01)[0]) == pytest.approx(0.01 ** (1 / 50))
    ks = torch.tensor([10, 40, 77])  # batched
    ref = [stats.beta.ppf(0.001, int(k), 100 - int(k) + 1) for k in ks]
    torch.testing.assert_close(
        clopper_pearson_lower(ks, 100, 0.001), torch.tensor(ref, dtype=torch.float64), rtol=1e-9, atol=1e-12
    )


def test_betainc_and_binomial_test_match_scipy():
    from scipy import special

    a = torch.tensor([0.5, 2.0, 30.0, 1000.0, 5e4], dtype=torch.float64)
    b = torch.tensor([3.0, 2.0, 1.0, 900.0, 5e4 + 7], dtype=torch.float64)
    x = torch.tensor([0.1, 0.7, 0.99, 0.52, 0.4999], dtype=torch.float64)
    torch.testing.assert_close(
        betainc(a, b, x),
        torch.tensor(special.betainc(a.numpy(), b.numpy(), x.numpy()), dtype=torch.float64),
        rtol=1e-9,
        atol=1e-14,
    )
    for k, n in ((60, 100), (40, 100), (50, 100), (530, 1000), (9, 10), (0, 5), (1000, 1000)):
        ref = stats.binomtest(k, n, 0.5, alternative="two-sided").pvalue
        assert float(binom_test_two_sided(torch.tensor(k), torch.tensor(n))) == pytest.approx(ref, rel=1e-8), (k, n)


def linear2(w: torch.Tensor, b: float):
    """Two classes: logits ``[0, w.x + b]``; class 1 iff ``w.x + b > 0``."""

    def f(x):
        s = x.flatten(1) @ w + b
        return torch.stack([torch.zeros_like(s), s], 1)

    return f


def test_certified_radius_of_a_linear_classifier_matches_the_closed_form():
    # P(f(x + e) = 1) = Phi((w.x + b) / (sigma |w|)), so the radius sigma Phi^-1(pA) is the distance
    # (w.x + b) / |w| to the decision boundary, and CERTIFY's radius is that minus the sampling slack.
    w, b, sigma = torch.tensor([3.0, -4.0, 0.0, 0.0]), 0.1, 0.5
    f = linear2(w, b)
    dist = torch.tensor([0.05, 0.2, 0.4, 0.7, -0.3])
    x = torch.zeros(5, 4)
    x[:, :2] = (dist[:, None] - b / 5) * (w[:2] / 5)  # w.x + b = 5 * dist
    n, alpha = 20_000, 0.001
    cfg = SmoothingConfig(sigma=sigma, n0=100, n=n, alpha=alpha, batch_size=50_000, clamp=False)
    pred, radius, p_lower = certify(f, x, cfg, 2, torch.Generator().manual_seed(0))
    p_true = torch.distributions.Normal(0, 1).cdf(dist / sigma)
    for i in range(5):
        expected_class = 1 if dist[i] > 0 else 0
        p_a = float(p_true[i]) if expected_class else 1 - float(p_true[i])
        if pred[i] == ABSTAIN:  # only near the boundary, where pA_lower can fall under 1/2
            assert p_a < 0.55, (i, p_a)
            continue
        assert int(pred[i]) == expected_class
        true_r = abs(float(dist[i]))
        # the Clopper-Pearson slack at n = 20000 is a few thousandths in probability
        slack = sigma * (stats.norm.ppf(p_a) - stats.norm.ppf(max(0.5, p_a - 4 * math.sqrt(p_a * (1 - p_a) / n))))
        assert float(radius[i]) <= true_r + 1e-6 and float(radius[i]) >= true_r - slack - 1e-3, (
            i,
            float(radius[i]),
            true_r,
        )
    assert (pred != ABSTAIN).sum() >= 4


def test_radius_is_sigma_times_phi_inverse_of_scipy_bound(monkeypatch):
    import lightning_modules.evaluation.smoothing as sm

    counts = torch.tensor([[3, 970, 27], [400, 350, 250], [0, 0, 1000]])
    calls = iter([counts, counts])
    monkeypatch.setattr(sm, "sample_counts", lambda *a, **k: next(calls))
    cfg = SmoothingConfig(sigma=0.25, n0=10, n=1000, alpha=0.001)
    pred, radius, p_lower = certify(None, torch.zeros(3, 1), cfg, 3)
    assert pred.tolist() == [1, ABSTAIN, 2]
    for i, k in ((0, 970), (2, 1000)):
        ref = 0.25 * stats.norm.ppf(stats.beta.ppf(0.001, k, 1000 - k + 1) if k < 1000 else 0.001 ** (1 / 1000))
        assert float(radius[i]) == pytest.approx(ref, rel=1e-5)
    assert float(radius[1]) == 0.0 and float(p_lower[1]) < 0.5


def smoothed_attack(f, x, y, sigma, eps, steps=30, samples=64, seed=0):
    """L2 PGD on the smoothed classifier: ascend the CE of the Monte Carlo average of softmax(f(x + e))."""
    g = torch.Generator().manual_seed(seed)
    delta = torch.zeros_like(x)
    for _ in range(steps):
        delta.requires_grad_(True)
        noise = torch.randn((samples, *x.shape), generator=g)
        p = (
            torch.softmax(f((x + delta).unsqueeze(0).add(sigma * noise).flatten(0, 1)), 1)
            .view(samples, len(x), -1)
            .mean(0)
        )
        loss = torch.nn.functional.nll_loss(torch.log(p + 1e-12), y)
        (gr,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            gr = gr / gr.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.ndim - 1))
            delta = delta + 0.2 * eps.view(-1, *[1] * (x.ndim - 1)) * gr
            scale = (eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1)
            delta = (delta * scale.view(-1, *[1] * (x.ndim - 1))).detach()
    return x + delta


def test_certified_examples_are_not_broken_by_an_l2_attack_within_their_radius():
    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(3, 6) * 2)
    f = lambda x: lin(x.flatten(1))  # noqa: E731
    x = torch.randn(16, 1, 2, 3) * 0.6
    sigma = 0.4
    cfg = SmoothingConfig(sigma=sigma, n0=64, n=4000, alpha=0.001, batch_size=64_000, clamp=False)
    pred, radius, _ = certify(f, x, cfg, 3, torch.Generator().manual_seed(1))
    ok = (pred != ABSTAIN) & (radius > 0.05)
    assert ok.sum() >= 6
    xs, cs, rs = x[ok], pred[ok], radius[ok]
    check = SmoothingConfig(sigma=sigma, n0=64, n=4000, alpha=0.001, batch_size=64_000, clamp=False)
    inside = predict(f, smoothed_attack(f, xs, cs, sigma, 0.98 * rs), check, 3, torch.Generator().manual_seed(2))
    assert ((inside == cs) | (inside == ABSTAIN)).all(), (inside, cs)
    # the same attack with twice the budget does break some: it is strong enough to notice a radius
    # that claimed too much
    outside = predict(f, smoothed_attack(f, xs, cs, sigma, 2.0 * rs), check, 3, torch.Generator().manual_seed(3))
    assert ((outside != cs) & (outside != ABSTAIN)).any()


def test_sample_counts_batches_without_changing_the_distribution():
    f = linear2(torch.tensor([1.0, 0.0]), 0.0)
    x = torch.tensor([[0.1, 0.0], [-0.2, 0.0], [0.0, 0.0]])
    for bs in (1, 7, 10_000):
        cfg = SmoothingConfig(sigma=0.5, n0=1, n=3000, batch_size=bs, clamp=False)
        c = sample_counts(f, x, 3000, cfg, 2, torch.Generator().manual_seed(0))
        assert c.sum(1).tolist() == [3000, 3000, 3000]
        p1 = c[:, 1].double() / 3000
        expect = torch.distributions.Normal(0, 1).cdf(torch.tensor([0.2, -0.4, 0.0])).double()
        assert ((p1 - expect).abs() < 0.04).all(), (bs, p1)


def test_certified_accuracy_counts_correct_and_radius():
    pred = torch.tensor([1, 2, ABSTAIN, 0])
    radius = torch.tensor([0.3, 0.6, 0.0, 0.1])
    y = torch.tensor([1, 2, 2, 1])
    assert certified_accuracy(pred, radius, y, [0, 0.25, 0.5, 0.75]) == {0.0: 0.5, 0.25: 0.5, 0.5: 0.25, 0.75: 0.0}


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"sigma": 0}, "sigma"),
        ({"sigma": -0.1}, "sigma"),
        ({"n0": 200, "n": 100}, "n0=200"),
        ({"alpha": 1.0}, "alpha"),
        ({"alpha": 0}, "alpha"),
        ({"n0": 0}, "n0"),
    ],
)
def test_bad_settings_fail_naming_them(kw, match):
    with pytest.raises(ValueError, match=match):
        SmoothingConfig(**kw)
