"""Adaptive attacks on the reversal: the unrolled reversal, BPDA, EOT, and that they beat the
non-adaptive attacks on a toy model where the reversal undoes those."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_modules.defense import DefendedModel
from lightning_modules.defense.reversal import ReversalConfig, reverse, reverse_differentiable, smooth_sign
from lightning_modules.evaluation import RobustEvaluator
from lightning_modules.evaluation.adaptive import StandIn, bpda_eot, defense_aware, full_gradient, transfer
from lightning_modules.nn.backbones import build_backbone
from lightning_modules.nn.heads import ContrastiveHead
from lightning_modules.views.fast import make_views
from tests.lightning_modules.evaluation.flat import flat_config
from tests.lightning_modules.toy_defense import toy_data, toy_fns

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only add overhead


def tiny_net(size: int = 16):
    torch.manual_seed(0)
    return build_backbone("small_cnn", width=4).eval(), ContrastiveHead(16, 16, 8).eval()


@pytest.mark.parametrize("backend", ["kornia", "fast"])
def test_unrolled_reversal_forward_equals_reversal(backend):
    net, head = tiny_net()
    cfg = ReversalConfig(steps=3, n_views=2, views=backend, random_start=True)
    x = torch.rand(4, 3, 16, 16)
    views = make_views(2, 16, cfg.scale, backend)
    torch.manual_seed(3)
    ref = reverse(net, head, x, cfg, views)
    torch.manual_seed(3)
    xg = x.clone().requires_grad_(True)
    out = reverse_differentiable(net, head, xg, cfg, views, use_checkpoint=True)
    assert torch.allclose(out.detach(), ref, atol=1e-6)
    (g_ck,) = torch.autograd.grad(out.square().sum(), xg)
    torch.manual_seed(3)
    xg2 = x.clone().requires_grad_(True)
    out2 = reverse_differentiable(net, head, xg2, cfg, views, use_checkpoint=False)
    (g_plain,) = torch.autograd.grad(out2.square().sum(), xg2)
    # checkpointing replays the same random views: same gradient; and it is not BPDA's identity
    assert torch.allclose(g_ck, g_plain, atol=1e-5)
    assert not torch.allclose(g_ck, 2 * out.detach(), atol=1e-4)
    assert (out.detach() - x).abs().max() <= cfg.eps + 1e-6


def test_smooth_sign_forward_exact_backward_tanh():
    g = torch.tensor([[0.5, -2.0, 0.0, 1.5]], requires_grad=True)
    s = smooth_sign(g, 0.5)
    assert torch.equal(s.detach(), g.detach().sign())
    (d,) = torch.autograd.grad(s.sum(), g)
    tau = 0.5 * g.detach().abs().mean()
    ref = (1 - torch.tanh(g.detach() / tau) ** 2) / tau  # d tanh(g / tau) / dg, tau held fixed
    assert torch.allclose(d, ref, rtol=1e-4, atol=1e-6)
    (d0,) = torch.autograd.grad(smooth_sign(g, 0).sum(), g, allow_unused=True, materialize_grads=True)
    assert torch.count_nonzero(d0) == 0


def test_bpda_stand_in_is_the_defense_forward_and_identity_backward():
    rev = lambda x: (x * 0.5 + 0.1).clamp(0, 1)  # noqa: E731
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 4))
    seen = []
    st = StandIn(net, rev, mode="bpda", observe=lambda x, z: seen.append((x, z)))
    x = torch.rand(3, 3, 4, 4, requires_grad=True)
    z = st(x)
    assert torch.allclose(z, net(rev(x.detach())))
    w = torch.randn_like(z)
    (g,) = torch.autograd.grad((z * w).sum(), x)
    xr = rev(x.detach()).requires_grad_(True)
    (ref,) = torch.autograd.grad((net(xr) * w).sum(), xr)  # the classifier's gradient at the reversed point
    assert torch.allclose(g, ref, atol=1e-6)
    assert len(seen) == 1 and torch.equal(seen[0][1], z.detach())


def test_full_gradient_matches_finite_differences_on_a_deterministic_defense(monkeypatch):
    """The full-gradient attack's gradient of ``CE(f(reverse(x)))`` through the unrolled reversal
    (second order, checkpointed steps) equals central finite differences on a tiny deterministic
    defense: fixed views, smooth activations (softplus, average pooling) and the signed step replaced
    by a smooth ``tanh(g / tau)`` in both passes, so the unrolled reversal is a smooth map whose
    gradient finite differences can check."""
    import lightning_modules.defense.reversal as reversal

    def smooth_step(g: torch.Tensor, smooth: float = 0.3) -> torch.Tensor:
        return torch.tanh(g / (smooth * g.abs().flatten(1).mean(1).view(-1, 1, 1, 1)))

    monkeypatch.setattr(reversal, "smooth_sign", smooth_step)
    net, head = tiny_net()
    for m in [*net.modules(), *head.modules()]:
        for name, child in list(m.named_children()):
            if isinstance(child, torch.nn.ReLU):
                setattr(m, name, torch.nn.Softplus(beta=5))
            elif isinstance(child, torch.nn.MaxPool2d):
                setattr(m, name, torch.nn.AvgPool2d(2))
    cfg = ReversalConfig(eps=0.3, alpha=0.02, steps=3, n_views=2, temperature=0.5)
    views = lambda x, n: torch.cat([x, x.flip(-1)])  # noqa: E731  deterministic views
    x = 0.3 + 0.4 * torch.rand(4, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 3])
    fns = DefendedModel(net, head, cfg, views=views)

    def loss(xx: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            net(fns.reverse_differentiable(xx, smooth=0.5, use_checkpoint=True))[0], y, reduction="sum"
        )

    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(xg), xg)
    xr = fns.reverse_differentiable(x, smooth=0.5).detach().requires_grad_(True)
    (g_bpda,) = torch.autograd.grad(F.cross_entropy(net(xr)[0], y, reduction="sum"), xr)
    h = 3e-3
    for k in range(4):
        d = torch.randn_like(x, generator=torch.Generator().manual_seed(k))
        with torch.no_grad():
            fd = (loss(x + h * d) - loss(x - h * d)) / (2 * h)
        assert torch.allclose((g * d).sum(), fd, rtol=3e-2, atol=2e-4), ((g * d).sum(), fd)
    assert not torch.allclose(g, g_bpda, rtol=0.05, atol=1e-4)  # the unrolled steps change the gradient


@pytest.mark.parametrize("norm,eps", [("Linf", 8 / 255), ("L2", 0.5)])
def test_adaptive_attacks_stay_in_the_ball(norm, eps):
    fns = toy_fns(steps=3)
    x, y = toy_data(8)
    alpha = eps / 4
    outs = {
        "defense_aware": defense_aware(fns.model_fn, fns.ssl, x, y, eps, alpha, 3, norm, lam=1.0),
        "bpda_eot": bpda_eot(
            fns.model_fn,
            fns.reverse,
            x,
            y,
            eps,
            alpha,
            3,
            norm,
            eot=2,
            restarts=2,
            defended=lambda z: fns.model_fn(fns.reverse(z)),
        ),
        "full_gradient": full_gradient(
            fns.model_fn, fns.reverse_differentiable, x, y, eps, alpha, 2, norm, eot=1, batch_size=3
        ),
        "transfer": transfer(fns.model_fn, x, y, eps, alpha, 3, norm),
    }
    for name, xa in outs.items():
        d = (xa - x).flatten(1)
        size = d.abs().amax(1) if norm == "Linf" else d.norm(dim=1)
        assert size.max() <= eps + 1e-5, name
        assert xa.min() >= 0 and xa.max() <= 1, name
        assert xa.shape == x.shape, name


def test_reversal_fns_from_module_follow_the_module():
    from lightning_modules.methods.module import ReversalModule

    m = ReversalModule(
        backbone="small_cnn",
        backbone_kwargs={"width": 4},
        head_hidden=16,
        head_dim=8,
        reversal=ReversalConfig(steps=2, n_views=2, views="fast"),
        ssl=dict(temperature=0.3),
    ).eval()
    fns = DefendedModel.from_module(m, m.reversal_cfg.override(steps=1))
    assert fns.cfg.steps == 1 and m.reversal_cfg.steps == 2 and fns.temperature == 0.3
    x = torch.rand(4, 3, 32, 32)
    torch.manual_seed(0)
    a = fns.reverse(x, steps=2)
    torch.manual_seed(0)
    b = m.reverse(x)
    assert torch.allclose(a, b, atol=1e-6)
    assert fns.ssl(x).shape == (4,)


def test_adaptive_attacks_beat_non_adaptive_on_toy():
    """On the toy the reversal undoes PGD (0% -> ~100%); the defense-aware and full-gradient attacks
    find the colour shifts the reversal cannot see. BPDA's straight-through gradient is the
    classifier's own, which keeps proposing the checkerboard the reversal removes: it is no
    stronger than PGD here (a known limit of BPDA against purifiers of this kind)."""
    fns = toy_fns()
    x, y = toy_data(32)
    cfg = flat_config(
        threat_models={"Linf": "8/255"},
        attacks=["pgd", "cw", "defense_aware", "bpda_eot", "full_gradient", "transfer"],
        steps=20,
        eot=1,
        draws=2,
        defense_aware_lambdas=[1.0],
        full_gradient_taus=[0.3],
        composition=[],
        eps_sweep=[],
        attack_steps_sweep=[],
        eot_sweep=[],
        reversal_steps_sweep=[],
        progress=False,
    )
    fns.surrogate_fn = fns.model_fn
    s = RobustEvaluator(fns, cfg).evaluate(x, y, batch_size=32)
    rows = {r["attack"]: r for r in s["rows"]}
    assert s["clean"]["without"] == 1.0 and s["clean"]["with"] == 1.0
    for a in ("pgd", "cw", "transfer"):  # the reversal demonstrably helps against non-adaptive attacks
        assert rows[a]["without"] == 0.0 and rows[a]["with"] >= 0.9, rows[a]
    non_adaptive = min(rows[a]["with"] for a in ("pgd", "cw"))
    for a in ("defense_aware", "full_gradient"):
        assert rows[a]["with"] <= non_adaptive - 0.2, rows[a]
    assert rows["bpda_eot"]["with"] <= non_adaptive + 1 / 32
    worst = s["worst_case"][0]
    assert worst["with"] <= min(rows[a]["with"] for a in rows) and worst["without"] == 0.0
    checks = {c["name"]: c["passed"] for c in s["sanity"]}
    assert checks["Linf 8/255: adaptive attacks at least as strong as non-adaptive (with reversal)"] is True
    assert checks["Linf 8/255: transfer >= white-box (with reversal)"] is True
