import math

import pytest
import torch
import torch.nn.functional as F

from lightning_modules.losses import cw_margin, info_nce, trades_kl


def info_nce_reference(z: torch.Tensor, n_views: int, t: float) -> torch.Tensor:
    """Slow loop: for each anchor, mean over its positives of -log softmax over all other rows."""
    n = z.shape[0]
    b = n // n_views
    z = [v / math.sqrt(float((v * v).sum())) for v in z.double()]
    per_image = [0.0] * b
    for a in range(n):
        denom = sum(math.exp(float(z[a] @ z[k]) / t) for k in range(n) if k != a)
        positives = [p for p in range(n) if p != a and p % b == a % b]
        la = sum(-math.log(math.exp(float(z[a] @ z[p]) / t) / denom) for p in positives) / len(positives)
        per_image[a % b] += la / n_views
    return torch.tensor(per_image, dtype=torch.float64)


@pytest.mark.parametrize("n_views,b,t", [(2, 5, 0.2), (4, 3, 0.5), (3, 4, 0.07)])
def test_info_nce_matches_manual_reference(n_views, b, t):
    torch.manual_seed(0)
    z = torch.randn(n_views * b, 7)
    ref = info_nce_reference(z, n_views, t)
    assert torch.allclose(info_nce(z, n_views, t, reduction="none").double(), ref, atol=1e-5)
    assert torch.allclose(info_nce(z, n_views, t).double(), ref.mean(), atol=1e-5)
    assert torch.allclose(info_nce(z, n_views, t, reduction="sum").double(), ref.sum(), atol=1e-4)


def info_nce_first_positive_reference(z: torch.Tensor, n_views: int, t: float) -> torch.Tensor:
    """Slow loop of the reference code's form: per anchor, cross-entropy over [positives, negatives]
    with the first positive (the lowest other view of the same image) as the label."""
    n = z.shape[0]
    b = n // n_views
    z = [v / math.sqrt(float((v * v).sum())) for v in z.double()]
    per_image = [0.0] * b
    for a in range(n):
        i, v = a % b, a // b
        positives = [w * b + i for w in range(n_views) if w != v]
        negatives = [k for k in range(n) if k % b != i]
        logits = [float(z[a] @ z[k]) / t for k in positives + negatives]
        la = -logits[0] + math.log(sum(math.exp(s) for s in logits))
        per_image[i] += la / n_views
    return torch.tensor(per_image, dtype=torch.float64)


@pytest.mark.parametrize("n_views,b,t", [(2, 5, 0.2), (4, 3, 0.5), (3, 4, 0.07)])
def test_info_nce_first_positive_matches_manual_reference(n_views, b, t):
    torch.manual_seed(4)
    z = torch.randn(n_views * b, 7)
    ref = info_nce_first_positive_reference(z, n_views, t)
    got = info_nce(z, n_views, t, reduction="none", positive="first")
    assert torch.allclose(got.double(), ref, atol=1e-5)
    if n_views == 2:  # one positive: both forms agree
        assert torch.allclose(got, info_nce(z, n_views, t, reduction="none"), atol=1e-6)
    else:
        assert not torch.allclose(got, info_nce(z, n_views, t, reduction="none"), atol=1e-3)
    with pytest.raises(ValueError, match="positive"):
        info_nce(z, n_views, t, positive="last")


@pytest.mark.parametrize("positive", ["all", "first"])
def test_info_nce_groups_equal_separate_calls(positive):
    torch.manual_seed(5)
    n_views, b, groups = 3, 4, 3
    blocks = [torch.randn(n_views, b, 6) for _ in range(groups)]
    z = torch.cat(blocks, dim=1).reshape(n_views * b * groups, 6)  # view-major over the repeated batch
    together = info_nce(z, n_views, 0.3, reduction="none", positive=positive, groups=groups)
    apart = torch.cat(
        [info_nce(blk.reshape(-1, 6), n_views, 0.3, reduction="none", positive=positive) for blk in blocks]
    )
    assert torch.allclose(together, apart, atol=1e-6)
    with pytest.raises(ValueError, match="groups"):
        info_nce(z, n_views, groups=5)


def test_info_nce_two_views_is_simclr_nt_xent():
    torch.manual_seed(1)
    b, t = 6, 0.2
    z = torch.randn(2 * b, 8)
    zn = F.normalize(z, dim=1)
    sim = zn @ zn.t() / t
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)])
    assert torch.allclose(info_nce(z, 2, t), F.cross_entropy(sim, target), atol=1e-6)


def test_info_nce_lower_for_aligned_views_and_rejects_bad_shapes():
    torch.manual_seed(2)
    base = torch.randn(8, 16)
    aligned = torch.cat([base, base + 0.01 * torch.randn_like(base)])
    random = torch.randn(16, 16)
    assert info_nce(aligned, 2) < info_nce(random, 2)
    with pytest.raises(ValueError, match="at least 2 views"):
        info_nce(random, 1)
    with pytest.raises(ValueError, match="do not split"):
        info_nce(torch.randn(7, 4), 2)


def test_trades_kl_and_cw_margin_reference():
    torch.manual_seed(3)
    za, zc = torch.randn(5, 4), torch.randn(5, 4)
    pc, pa = zc.softmax(1), za.softmax(1)
    ref = (pc * (pc.log() - pa.log())).sum(1).mean()
    assert torch.allclose(trades_kl(za, zc), ref, atol=1e-6)
    y = torch.tensor([0, 1, 2, 3, 0])
    m = cw_margin(za, y, kappa=1e9)
    for i in range(5):
        other = max(float(za[i, j]) for j in range(4) if j != y[i])
        assert math.isclose(float(m[i]), other - float(za[i, y[i]]), rel_tol=1e-5, abs_tol=1e-6)


def test_info_nce_stays_fp32_under_bf16_autocast():
    """bf16-mixed training autocasts matmuls to bf16; the similarities must not be (steps of ~0.03 at t=0.2)."""
    torch.manual_seed(0)
    z = torch.randn(2 * 32, 16, requires_grad=True)
    ref = info_nce(z, 2, 0.2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = info_nce(z, 2, 0.2)
    assert amp.dtype == torch.float32 and torch.allclose(amp, ref, rtol=1e-6, atol=1e-6)
    amp.backward()
    assert z.grad is not None and z.grad.dtype == torch.float32
