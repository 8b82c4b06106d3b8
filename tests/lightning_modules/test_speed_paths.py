"""The speed options: no wasted forward in single-restart PGD, reversal views built once,
bf16 reversal with an fp32 loss, compile without changing checkpoints, sync-free training logs."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from lightning_modules import ReversalModule
from lightning_modules.attacks.core import pgd, projected_gradient
from lightning_modules.defense.reversal import ReversalConfig, reverse, ssl_loss
from lightning_modules.nn.backbones import build_backbone
from lightning_modules.nn.heads import ContrastiveHead
from lightning_modules.views.fast import FastSimCLRViews


class Counting(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))


def test_single_restart_pgd_runs_exactly_steps_forwards_and_matches_the_core():
    net = Counting(_net())
    x, y = torch.rand(6, 3, 8, 8), torch.randint(0, 10, (6,))
    torch.manual_seed(1)
    out = pgd(net, x, y, eps=8 / 255, alpha=2 / 255, steps=5)
    assert net.calls == 5
    torch.manual_seed(1)
    ref = projected_gradient(
        lambda xa: nn.functional.cross_entropy(net(xa), y, reduction="none"), x, 8 / 255, 2 / 255, 5
    )
    torch.testing.assert_close(out, ref)
    net.calls = 0
    pgd(net, x, y, steps=5, restarts=2)
    assert net.calls == 2 * 5 + 2  # restarts still score each run


def test_module_builds_the_reversal_views_once():
    m = ReversalModule(
        backbone="small_cnn",
        backbone_kwargs={"width": 4},
        head_hidden=16,
        head_dim=8,
        reversal=ReversalConfig(steps=1, views="fast"),
    )
    x = torch.rand(4, 3, 32, 32)
    m.reverse(x)
    m.reverse(x)
    assert len(m._reversal_views) == 1
    assert isinstance(next(iter(m._reversal_views.values())), FastSimCLRViews)
    m.reverse(x, ReversalConfig(steps=1, n_views=3, views="fast"))
    assert len(m._reversal_views) == 2
    # the evaluation's callables share the module's cache: the same views object, no second build
    from lightning_modules.defense import DefendedModel

    fns = DefendedModel.from_module(m)
    fns.reverse(x)
    assert len(m._reversal_views) == 2 and fns._views(x) is m._reversal_views[next(iter(m._reversal_views))]


def test_reversal_config_names_a_bad_views_backend():
    with pytest.raises(ValueError, match="views 'warp'"):
        ReversalConfig(views="warp")


def test_ssl_loss_is_fp32_under_autocast_and_the_bf16_reversal_stays_in_the_ball():
    torch.manual_seed(0)
    net, head = build_backbone("small_cnn", width=8).eval(), ContrastiveHead(32, 64, 16).eval()
    x = torch.rand(6, 3, 32, 32)
    views = FastSimCLRViews(4, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = ssl_loss(net, head, x, views, 4, 0.2)
    assert loss.dtype == torch.float32 and loss.shape == (6,)
    cfg = ReversalConfig(steps=3, amp=True, views="fast")
    out = reverse(net, head, x, cfg)
    assert (out - x).abs().max() <= cfg.eps + 1e-6 and out.dtype == torch.float32
    assert (out - x).abs().max() > 0


def test_compile_option_keeps_checkpoint_keys_and_compiles_once_in_setup():
    m = ReversalModule(backbone="small_cnn", backbone_kwargs={"width": 4}, speed=dict(compile=True))
    keys = list(m.state_dict())
    m.setup("fit")
    m.setup("fit")
    assert list(m.state_dict()) == keys and all("_orig_mod" not in k for k in keys)
    assert m.classifier._compiled_call_impl is not None
    plain = ReversalModule(backbone="small_cnn", backbone_kwargs={"width": 4})
    plain.setup("fit")
    assert plain.classifier._compiled_call_impl is None


def test_train_progress_bar_flag_reaches_the_logs():
    m = ReversalModule(backbone="small_cnn", backbone_kwargs={"width": 4}, speed=dict(train_progress_bar=False))
    assert m.speed_cfg.train_progress_bar is False and m.hparams.speed["train_progress_bar"] is False
    with pytest.raises(ValueError, match="unknown ssl.views"):
        ReversalModule(backbone="small_cnn", ssl=dict(views="nope"))


def test_attacks_and_reversal_freeze_parameters_and_restore_them():
    """Compiled backward graphs compute every gradient whose input requires one: the attack and the
    reversal must run with the weights frozen, and leave them trainable afterwards."""
    from lightning_modules.attacks.core import frozen_params

    m = ReversalModule(
        backbone="small_cnn",
        backbone_kwargs={"width": 4},
        head_hidden=16,
        head_dim=8,
        reversal=ReversalConfig(steps=1, views="fast"),
        attack=dict(mode="pgd", steps=1),
    )
    seen = []
    m.classifier.register_forward_pre_hook(lambda mod, inp: seen.append(any(p.requires_grad for p in mod.parameters())))
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    m.train_inputs(x, y)
    m.attack(x, y, steps=1)
    m.reverse(x)
    assert seen and not any(seen)
    assert all(p.requires_grad for p in m.parameters())
    seen.clear()
    m.training_step((x, y, None), 0).backward()
    assert seen[-1] is True and m.classifier.net.linear.weight.grad is not None
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with frozen_params(frozen, None):
        pass
    assert not frozen.weight.requires_grad  # only what was trainable is turned back on
