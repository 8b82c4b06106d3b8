"""Adversarial contrastive pretraining (AdvCL/ACL) and linear probing."""

from __future__ import annotations

import math
import warnings

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_modules.losses import info_nce, multiview_info_nce
from lightning_modules.methods.advcl import (
    AdvCLModule,
    LinearProbeModule,
    adversarial_view,
    high_frequency,
    linear_layer,
)
from lightning_modules.nn.backbones import build_backbone
from lightning_modules.nn.heads import ContrastiveHead
from tests.lightning_modules.evaluation.flat import flat_config

SMALL = dict(backbone="small_cnn", backbone_kwargs={"width": 8}, head_hidden=32, head_dim=16)


def loader(n: int = 32, batch: int = 16, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return DataLoader(TensorDataset(x, y, torch.arange(n)), batch_size=batch)


def trainer(steps: int) -> pl.Trainer:
    return pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )


# -- pure pieces ---------------------------------------------------------------------------------
def test_multiview_info_nce_is_info_nce_of_concatenation():
    zs = list(torch.randn(4, 6, 5, generator=torch.Generator().manual_seed(0)).unbind(0))
    torch.testing.assert_close(multiview_info_nce(zs, 0.3), info_nce(torch.cat(zs), 4, 0.3))
    torch.testing.assert_close(multiview_info_nce(zs, 0.3, "none"), info_nce(torch.cat(zs), 4, 0.3, "none"))
    with pytest.raises(ValueError, match="at least 2 views"):
        multiview_info_nce(zs[:1])
    with pytest.raises(ValueError, match="same"):
        multiview_info_nce([zs[0], zs[1][:3]])


def test_high_frequency_removes_low_and_keeps_high_frequencies():
    h = w = 32
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    low = torch.cos(2 * math.pi * 2 * xx / w)  # 2 cycles per image
    high = torch.cos(2 * math.pi * (10 * xx + 9 * yy) / w)  # |f| = sqrt(181) ~ 13.5
    x = (0.5 + 0.2 * low + 0.1 * high).expand(2, 3, h, w)
    out = high_frequency(x, radius=8)
    torch.testing.assert_close(out, (0.5 + 0.1 * high).expand(2, 3, h, w), atol=1e-5, rtol=0)
    torch.testing.assert_close(high_frequency(x, 0), x)
    const = torch.full((1, 3, h, w), 0.3)
    torch.testing.assert_close(high_frequency(const, 8), const)
    with pytest.raises(ValueError, match="radius"):
        high_frequency(x, -1)


def test_adversarial_view_raises_infonce_and_stays_in_eps_ball():
    torch.manual_seed(0)
    net, head = build_backbone("small_cnn", width=8).eval(), ContrastiveHead(32, 32, 16).eval()

    def encode(x):
        return head(net(x)[1])

    g = torch.Generator().manual_seed(0)
    base = torch.rand(16, 3, 1, 1, generator=g) * 0.8 + 0.1  # distinct images: a meaningful contrast
    x1 = (base + 0.1 * torch.randn(16, 3, 32, 32, generator=g)).clamp(0, 1)
    x1[:, :, :4] = 1.0  # saturated pixels: the view must stay in [0, 1]
    x2 = (x1 + 0.02 * torch.randn(16, 3, 32, 32, generator=g)).clamp(0, 1)
    eps, t = 8 / 255, 0.1

    def loss(x, z2):
        with torch.no_grad():
            return multiview_info_nce([encode(x), z2], t, "none")

    with torch.no_grad():
        z2 = encode(x2)
    clean = loss(x1, z2)
    noise = loss((x1 + (torch.rand(x1.shape, generator=g) * 2 - 1) * eps).clamp(0, 1), z2)
    x_adv = adversarial_view(encode, x1, [z2], eps=eps, alpha=2 / 255, steps=5, temperature=t)
    adv = loss(x_adv, z2)
    assert (x_adv - x1).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (adv > clean).all()
    # far above what random noise of the same size does
    assert (adv - clean).mean() > max(1e-3, 20 * (noise - clean).abs().mean())
    assert not any(p.grad is not None for p in list(net.parameters()) + list(head.parameters()))


# -- AdvCL module ------------------------------------------------------------------------------
def test_advcl_training_step_runs_and_labels_only_reach_the_probe():
    torch.manual_seed(0)
    m = AdvCLModule(
        hf_radius=8,
        **SMALL,
        attack=dict(steps=2),
        optim=dict(lr=0.05, schedule="constant"),
        inference=dict(val_attack_steps=0),
    )
    x = torch.rand(8, 3, 32, 32)
    # labels: the probe's loss reaches only the linear layer
    _, feats = m.classifier(x)
    m.zero_grad()
    torch.nn.functional.cross_entropy(m.probe(feats), torch.randint(0, 10, (8,))).backward()
    lin = linear_layer(m.classifier)
    grads = {n for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads == {"classifier.net.linear.weight", "classifier.net.linear.bias"}
    assert lin is m.classifier.net.linear
    m.zero_grad()
    # two training steps: finite loss, the backbone, head and probe all move
    before = {k: v.clone() for k, v in m.state_dict().items()}
    trainer(2).fit(m, loader())
    after = m.state_dict()
    for key in ("classifier.net.body.0.weight", "head.0.weight", "classifier.net.linear.weight"):
        assert not torch.equal(before[key], after[key]), key
    logged = m.trainer.callback_metrics
    assert math.isfinite(float(logged["train/loss_ssl"])) and math.isfinite(float(logged["train/loss_probe"]))


def test_advcl_uses_four_views_with_hf_and_three_without(monkeypatch):
    import lightning_modules.methods.advcl as advcl

    seen = []
    real = advcl.multiview_info_nce

    def spy(zs, *a, **k):
        seen.append(len(zs))
        return real(zs, *a, **k)

    monkeypatch.setattr(advcl, "multiview_info_nce", spy)
    for hf, n in ((8, 4), (None, 3)):
        seen.clear()
        m = AdvCLModule(
            hf_radius=hf,
            **SMALL,
            attack=dict(steps=1),
            optim=dict(schedule="constant"),
            inference=dict(val_attack_steps=0),
        )
        trainer(1).fit(m, loader(16))
        # the attack's objective sees 2 views (adversarial + other), the training loss n views
        assert seen[-1] == n and set(seen[:-1]) == {2}


def test_advcl_rejects_labelled_training_modes():
    with pytest.raises(ValueError, match="attack.mode must be 'standard'"):
        AdvCLModule(**SMALL, attack=dict(mode="pgd"))
    with pytest.raises(ValueError, match="freeze_backbone"):
        AdvCLModule(freeze_backbone=True, **SMALL)


# -- linear probing ----------------------------------------------------------------------------
@pytest.fixture
def pretrained(tmp_path):
    torch.manual_seed(1)
    m = AdvCLModule(**SMALL)
    path = tmp_path / "advcl.ckpt"
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": {}}, path)
    return m, path


@pytest.mark.parametrize("training", ["standard", "pgd"])
def test_linear_probe_freezes_backbone_and_trains_only_linear(pretrained, training):
    src, path = pretrained
    torch.manual_seed(0)
    m = LinearProbeModule(
        str(path),
        **SMALL,
        attack=dict(mode=training, steps=2),
        optim=dict(lr=0.1, schedule="constant"),
        inference=dict(val_attack_steps=0),
    )
    assert [n for n, p in m.named_parameters() if p.requires_grad] == [
        "classifier.net.linear.weight",
        "classifier.net.linear.bias",
    ]
    # the backbone and head come from the checkpoint; the linear layer is fresh
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    src_sd = src.state_dict()
    for k in src_sd:
        if "linear" in k:
            assert not torch.equal(sd[k], src_sd[k]), k
        else:
            assert torch.equal(sd[k], src_sd[k]), k
    trainer(3).fit(m, loader())
    assert not m.classifier.training and not m.head.training
    after = m.state_dict()
    for k, v in sd.items():
        if k.startswith("classifier.net.linear"):
            assert not torch.equal(v, after[k]), k
        else:  # parameters and BatchNorm buffers alike
            assert torch.equal(v, after[k]), k


def test_linear_probe_only_linear_gets_grads(pretrained):
    _, path = pretrained
    m = LinearProbeModule(str(path), **SMALL).train()
    x = torch.rand(4, 3, 32, 32, requires_grad=True)
    torch.nn.functional.cross_entropy(m.model_fn(x), torch.arange(4)).backward()
    with_grad = [n for n, p in m.named_parameters() if p.grad is not None]
    assert with_grad == ["classifier.net.linear.weight", "classifier.net.linear.bias"]
    assert x.grad is not None  # attacks still see gradients through the frozen backbone


def test_linear_probe_errors_and_missing_head_warning(pretrained, tmp_path):
    _, path = pretrained
    probe = LinearProbeModule(str(path), **SMALL, ssl=dict(weight=0.5))  # not used: only the linear layer trains
    assert [n for n, p in probe.named_parameters() if p.requires_grad] == [
        "classifier.net.linear.weight",
        "classifier.net.linear.bias",
    ]
    with pytest.raises(ValueError, match="freeze_backbone"):
        LinearProbeModule(str(path), freeze_backbone=True, **SMALL)
    with pytest.raises(RuntimeError, match="size mismatch for net.body.0.weight"):
        LinearProbeModule(str(path), backbone="small_cnn", backbone_kwargs={"width": 16})
    with pytest.raises(RuntimeError, match="contrastive head"):
        LinearProbeModule(str(path), **{**SMALL, "head_dim": 8})
    bare = tmp_path / "bare.pt"
    torch.save(build_backbone("small_cnn", width=8).net.state_dict(), bare)
    with pytest.warns(UserWarning, match="no contrastive head"):
        LinearProbeModule(str(bare), **SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LinearProbeModule(str(bare), load_head=False, **SMALL)


def test_linear_probe_runs_through_the_robust_evaluation(pretrained):
    from lightning_modules.defense import DefendedModel
    from lightning_modules.evaluation import RobustEvaluator

    _, path = pretrained
    m = LinearProbeModule(str(path), **SMALL)
    fns = DefendedModel.from_module(m, m.reversal_cfg.override(steps=1))
    assert fns.classifier is m.classifier and fns.head is m.head and fns.temperature == m.ssl_cfg.temperature
    cfg = flat_config(
        threat_models={"Linf": 8 / 255},
        attacks=["pgd"],
        steps=1,
        draws=2,
        composition=[],
        eps_sweep=[],
        attack_steps_sweep=[],
        eot_sweep=[],
        reversal_steps_sweep=[],
        progress=False,
    )
    ev = RobustEvaluator(fns, cfg)
    ev.evaluate_batch(torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,)), torch.arange(4))
    assert [r["attack"] for r in ev.summary()["rows"]] == ["pgd"]
