"""The ``mao2021`` reversal recipe: its settings, shared views, the L2 reversal, the first-positive loss."""

import dataclasses

import pytest
import torch

from lightning_modules.defense.reversal import ReversalConfig, reverse, ssl_loss
from lightning_modules.losses import info_nce
from lightning_modules.nn.backbones import build_backbone
from lightning_modules.nn.heads import ContrastiveHead
from lightning_modules.views.fast import FastSimCLRViews
from lightning_modules.views.kornia import SimCLRViews

from .test_reversal import deterministic_views


def small_net(seed=0):
    torch.manual_seed(seed)
    net = build_backbone("small_cnn", width=8).eval()
    return net, ContrastiveHead(net.feature_dim, 32, 16).eval()


def test_recipe_settings_are_the_reference_code_ones():
    # cifar10_defense_rebAA.py: RandomResizedCrop(32) + flip + ColorJitter(0.8, 0.8, 0.8, 0.2) (p=1)
    # + RandomGrayscale(0.2) on the batch tensor, uniform start, label 0 = first positive,
    # eps * adda_times (2), base_attack_step (20) * adda_times steps of pgd_alpha (2/255), 4 views
    c = ReversalConfig(recipe="mao2021")
    assert (c.shared_views, c.jitter, c.p_jitter, c.p_gray) == (True, (0.8, 0.8, 0.8, 0.2), 1.0, 0.2)
    assert tuple(c.scale) == (0.08, 1.0) and c.random_start and c.positive == "first"
    assert (c.steps, c.alpha, c.n_views, c.budget_factor) == (40, 2 / 255, 4, 2.0)
    linf = c.for_threat("Linf", 8 / 255)
    assert linf.norm == "Linf" and linf.eps == pytest.approx(16 / 255)
    l2 = c.for_threat("L2", 0.5)
    assert l2.norm == "L2" and l2.eps == pytest.approx(1.0) and l2.steps == 40
    # the package's recipe stays the default and its budget is fixed
    p = ReversalConfig()
    assert (p.recipe, p.shared_views, p.p_jitter, p.positive, p.random_start) == ("package", False, 0.8, "all", False)
    assert p.for_threat("Linf", 4 / 255) is p and p.for_threat("L2", 0.0) is p
    p2 = p.for_threat("L2", 0.5)
    assert p2.norm == "L2" and p2.eps == pytest.approx(1.0) and p2.positive == "all"
    assert c.for_threat("Linf", 0.0) is c  # clean rows keep the configured reversal
    # one setting switched, the others kept (the ablation)
    a = dataclasses.replace(c, shared_views=False)
    assert not a.shared_views and a.positive == "first" and a.p_jitter == 1.0
    with pytest.raises(ValueError):
        ReversalConfig(recipe="nope")


@pytest.mark.parametrize("backend", [SimCLRViews, FastSimCLRViews])
def test_shared_views_give_identical_images_the_same_view(backend):
    torch.manual_seed(0)
    x = torch.rand(1, 3, 32, 32).expand(6, 3, 32, 32).contiguous()
    v = backend(n_views=3, size=32, jitter=(0.8, 0.8, 0.8, 0.2), p_jitter=1.0, shared=True)(x).view(3, 6, 3, 32, 32)
    assert torch.allclose(v, v[:, :1].expand_as(v), atol=1e-6)  # every image the same view
    assert not torch.allclose(v[0], v[1], atol=1e-3)  # a fresh draw per view
    w = backend(n_views=3, size=32, shared=False)(x).view(3, 6, 3, 32, 32)
    assert not torch.allclose(w, w[:, :1].expand_as(w), atol=1e-3)  # per-image draws differ


@pytest.mark.parametrize("views", ["kornia", "fast"])
def test_head_training_views_follow_the_ssl_recipe(views):
    """``ssl.recipe: mao2021`` trains the head on the reference views (one draw per view for the batch)."""
    from lightning_modules import ReversalModule

    x = torch.rand(1, 3, 32, 32).expand(6, 3, 32, 32).contiguous()
    for recipe, shared in (("package", False), ("mao2021", True)):
        m = ReversalModule(backbone="small_cnn", backbone_kwargs={"width": 4}, ssl={"recipe": recipe, "views": views})
        torch.manual_seed(0)
        v = m.views(x, 2).view(2, 6, 3, 32, 32)
        assert torch.allclose(v, v[:, :1].expand_as(v), atol=1e-6) == shared
        assert (m.ssl_cfg.positive, m.ssl_cfg.view_options()["p_jitter"]) == (
            ("first", 1.0) if shared else ("all", 0.8)
        )


def test_l2_reversal_stays_in_the_l2_ball_and_lowers_the_loss():
    net, head = small_net()
    x = torch.rand(8, 3, 32, 32)
    cfg = ReversalConfig(recipe="mao2021", steps=10, alpha=0.1, random_start=False).for_threat("L2", 0.25)
    with torch.no_grad():
        before = ssl_loss(net, head, x, deterministic_views, 4, 0.2, positive="first").mean()
    x_rev = reverse(net, head, x, cfg, views=deterministic_views)
    with torch.no_grad():
        after = ssl_loss(net, head, x_rev, deterministic_views, 4, 0.2, positive="first").mean()
    assert after < before - 1e-3
    assert (x_rev - x).flatten(1).norm(dim=1).max() <= 0.5 + 1e-5
    assert (x_rev - x).flatten(1).norm(dim=1).min() > 0.1  # it moved


def test_one_l2_step_matches_a_manual_normalized_step():
    net, head = small_net(1)
    x = torch.rand(6, 3, 32, 32) * 0.5 + 0.25  # no clipping at [0, 1] in one step
    cfg = ReversalConfig(recipe="mao2021", steps=1, alpha=0.3, random_start=False).for_threat("L2", 0.5)
    xr = x.clone().requires_grad_(True)
    loss = ssl_loss(net, head, xr, deterministic_views, 4, 0.2, positive="first").sum()
    (g,) = torch.autograd.grad(loss, xr)
    ref = x - 0.3 * g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    assert torch.allclose(reverse(net, head, x, cfg, views=deterministic_views), ref, atol=1e-5)


class PixelNet(torch.nn.Module):
    """``x -> (None, pixels)``: embeddings that differ between images (an untrained CNN's barely do)."""

    def forward(self, x):
        return None, x.flatten(1)


def test_recipe_loss_is_info_nce_with_the_first_positive():
    torch.manual_seed(2)
    net, head = PixelNet(), torch.nn.Linear(3 * 32 * 32, 16)
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        z = head(net(deterministic_views(x, 4))[1])
        got = ssl_loss(net, head, x, deterministic_views, 4, 0.2, positive="first")
    assert torch.allclose(got, info_nce(z, 4, 0.2, "none", positive="first"), atol=1e-6)
    assert not torch.allclose(got, info_nce(z, 4, 0.2, "none"), atol=1e-4)
