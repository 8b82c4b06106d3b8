"""The ASCL loss and its pair selection against slow per-anchor / per-pair loops."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_modules.methods.supcon import PairMasks, ascl_loss, kept_fractions, select_pairs


def manual_ascl(z_adv, z_clean, y, t, keep=None):
    """Per anchor: -mean over kept positives of log(exp(s_ap/t) / sum over kept pairs exp(s_ak/t))."""
    pool = torch.cat([z_adv, z_clean]).double()
    pool = pool / pool.norm(dim=1, keepdim=True)
    labels = torch.cat([y, y]).tolist()
    b = len(y)
    out = []
    for i in range(b):
        pos, allowed = [], []
        for k in range(2 * b):
            if k == i:
                continue
            is_pos = labels[k] == labels[i]
            kept = (keep.pos[i, k] if is_pos else keep.neg[i, k]) if keep is not None else True
            if kept:
                allowed.append(k)
                if is_pos:
                    pos.append(k)
        if not pos:
            out.append(0.0)
            continue
        denom = sum(math.exp(float(pool[i] @ pool[k]) / t) for k in allowed)
        out.append(-sum(math.log(math.exp(float(pool[i] @ pool[p]) / t) / denom) for p in pos) / len(pos))
    return torch.tensor(out, dtype=torch.float64)


def manual_select(y, pred_adv, pred_clean, sim=None, topk=0):
    b = len(y)
    labels, preds = torch.cat([y, y]).tolist(), torch.cat([pred_adv, pred_clean]).tolist()
    pos = torch.zeros(b, 2 * b, dtype=torch.bool)
    neg = torch.zeros(b, 2 * b, dtype=torch.bool)
    for i in range(b):
        others = [k for k in range(2 * b) if labels[k] != labels[i]]
        near = sorted(others, key=lambda k: -float(sim[i, k]))[:topk] if topk else []
        for k in range(2 * b):
            if k == i:
                continue
            if labels[k] == labels[i]:
                pos[i, k] = preds[k] == labels[k] or k == i + b
            else:
                neg[i, k] = preds[k] == labels[i] or k in near
    return PairMasks(pos, neg)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    b = 12
    y = torch.randint(0, 4, (b,), generator=g)
    return (
        torch.randn(b, 6, generator=g),
        torch.randn(b, 6, generator=g),
        y,
        torch.randint(0, 4, (b,), generator=g),
        torch.randint(0, 4, (b,), generator=g),
    )


def test_ascl_loss_matches_manual_reference_without_selection(batch):
    z_adv, z_clean, y, _, _ = batch
    ref = manual_ascl(z_adv, z_clean, y, 0.2)
    torch.testing.assert_close(ascl_loss(z_adv, z_clean, y, 0.2, reduction="none").double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ascl_loss(z_adv, z_clean, y, 0.2).double(), ref.mean(), rtol=1e-5, atol=1e-5)
    assert ascl_loss(z_adv, z_clean, y, 0.2, select_pairs(y, y, y, "none")).item() == pytest.approx(
        ref.mean().item(), rel=1e-5
    )


@pytest.mark.parametrize("topk", [0, 3])
def test_leaked_selection_and_loss_match_manual_reference(batch, topk):
    z_adv, z_clean, y, pa, pc = batch
    pool = torch.nn.functional.normalize(torch.cat([z_adv, z_clean]), dim=1)
    sim = pool[: len(y)] @ pool.t()
    keep = select_pairs(y, pa, pc, "leaked", sim if topk else None, topk)
    ref_keep = manual_select(y, pa, pc, sim, topk)
    assert torch.equal(keep.pos, ref_keep.pos) and torch.equal(keep.neg, ref_keep.neg)
    assert keep.pos[torch.arange(len(y)), torch.arange(len(y)) + len(y)].all()  # own clean counterpart
    got = ascl_loss(z_adv, z_clean, y, 0.1, keep, reduction="none").double()
    torch.testing.assert_close(got, manual_ascl(z_adv, z_clean, y, 0.1, ref_keep), rtol=1e-5, atol=1e-5)
    # selection changes the loss (the test would not notice a selection that is ignored)
    assert not torch.allclose(got, manual_ascl(z_adv, z_clean, y, 0.1).double(), atol=1e-3)
    fp, fn = kept_fractions(keep, y)
    all_pos, all_neg = select_pairs(y, pa, pc, "none")
    assert fp.item() == pytest.approx(ref_keep.pos.sum().item() / all_pos.sum().item())
    assert fn.item() == pytest.approx(ref_keep.neg.sum().item() / all_neg.sum().item())
    assert 0 < fp < 1 and 0 <= fn < 1


def test_loss_rewards_class_clusters_and_has_gradients():
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    centers = torch.eye(3, 8) * 5
    z_good = centers[y] + 0.01 * torch.randn(6, 8)
    z_bad = torch.randn(6, 8)
    assert ascl_loss(z_good, z_good.clone(), y) < ascl_loss(z_bad, z_bad.clone(), y)
    z = torch.randn(6, 8, requires_grad=True)
    ascl_loss(z, z.detach() + 0.1, y).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_bad_inputs_fail_naming_the_thing(batch):
    z_adv, z_clean, y, pa, pc = batch
    with pytest.raises(ValueError, match="selection 'hard'"):
        select_pairs(y, pa, pc, "hard")
    with pytest.raises(ValueError, match="temperature"):
        ascl_loss(z_adv, z_clean, y, 0.0)
    with pytest.raises(ValueError, match="shape"):
        ascl_loss(z_adv, z_clean[:3], y)
    with pytest.raises(ValueError, match="sim"):
        select_pairs(y, pa, pc, "leaked", None, neg_topk=2)


def test_ascl_loss_stays_fp32_under_bf16_autocast(batch):
    z_adv, z_clean, y = batch[:3]
    ref = ascl_loss(z_adv, z_clean, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = ascl_loss(z_adv, z_clean, y)
    assert amp.dtype == torch.float32 and torch.allclose(amp, ref, rtol=1e-6, atol=1e-6)
