"""FastSimCLRViews against kornia's SimCLRViews: same output for the same parameters, same draws."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_modules.views.fast import FastSimCLRViews, make_views, resize_matrix
from lightning_modules.views.kornia import SimCLRViews


def _kornia_params_to_fast(params) -> dict:
    crop, flip, jit, gray = (p.data for p in params)
    src = crop["src"]  # (B, 4, 2) corners (x, y): top-left, top-right, bottom-right, bottom-left
    return {
        "x0": src[:, 0, 0],
        "y0": src[:, 0, 1],
        "w": src[:, 1, 0] - src[:, 0, 0] + 1,
        "h": src[:, 2, 1] - src[:, 0, 1] + 1,
        "flip": flip["batch_prob"] > 0.5,
        "jitter": jit["batch_prob"] > 0.5,
        "brightness": jit["brightness_factor"],
        "contrast": jit["contrast_factor"],
        "saturation": jit["saturation_factor"],
        "hue": jit["hue_factor"],
        "order": jit["order"],
        "gray": gray["batch_prob"] > 0.5,
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_output_as_kornia_for_kornia_parameters(seed):
    torch.manual_seed(seed)
    x = torch.rand(16, 3, 32, 32)
    k = SimCLRViews(1, 32)
    torch.manual_seed(seed)
    ref = k(x)
    params = _kornia_params_to_fast(k.aug._params)
    assert params["jitter"].any() and params["flip"].any() and not params["flip"].all()
    out = FastSimCLRViews(1, 32).apply(x, params).clamp(0, 1)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=0)


def test_gradient_matches_kornia():
    torch.manual_seed(3)
    x = torch.rand(8, 3, 32, 32)
    k = SimCLRViews(1, 32)
    xk = x.clone().requires_grad_(True)
    w = torch.randn(8, 3, 32, 32)
    (k(xk) * w).sum().backward()
    xf = x.clone().requires_grad_(True)
    (FastSimCLRViews(1, 32).apply(xf, _kornia_params_to_fast(k.aug._params)).clamp(0, 1) * w).sum().backward()
    torch.testing.assert_close(xf.grad, xk.grad, atol=1e-4, rtol=1e-4)


def test_resize_matrix_is_bilinear_align_corners_against_a_loop():
    start, extent = torch.tensor([3.0, 0.0, 7.0]), torch.tensor([10.0, 32.0, 1.0])
    r = resize_matrix(start, extent, 8, 32)
    for b in range(3):
        for j in range(8):
            c = start[b].item() + j * (extent[b].item() - 1) / 7
            lo = math.floor(c)
            ref = torch.zeros(32)
            ref[lo] += 1 - (c - lo)
            if c - lo > 0:
                ref[lo + 1] += c - lo
            torch.testing.assert_close(r[b, j], ref)


def test_parameter_distribution_matches_kornia():
    torch.manual_seed(0)
    n = 4000
    fast = FastSimCLRViews(1, 32).sample(n, 32, 32)
    ref = _kornia_params_to_fast(SimCLRViews(1, 32).aug.forward_parameters(torch.Size((n, 3, 32, 32))))
    for key in ("flip", "jitter", "gray"):
        assert abs(fast[key].float().mean() - ref[key].float().mean()) < 0.04, key
    for key in ("w", "h", "x0", "y0", "brightness", "contrast", "saturation", "hue"):
        a, b = fast[key].float(), ref[key].float()
        assert abs(a.mean() - b.mean()) < 0.05 * (b.std() + 1e-3) * 3, key
        assert abs(a.std() - b.std()) < 0.08 * b.std() + 1e-3, key
        assert a.min() >= b.min() - 1 and a.max() <= b.max() + 1, key
    area = fast["w"] * fast["h"] / 1024
    assert area.min() >= 0.05 and area.max() <= 1.0
    assert (fast["x0"] + fast["w"] <= 32).all() and (fast["y0"] + fast["h"] <= 32).all()


def test_views_shape_range_view_major_and_no_host_sync():
    from torch.utils._python_dispatch import TorchDispatchMode

    syncs = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.__name__.split(".")[0] in ("_local_scalar_dense", "nonzero", "is_nonzero", "_unique2"):
                syncs.append(func.__name__)
            return func(*args, **(kwargs or {}))

    x = torch.rand(5, 3, 32, 32, requires_grad=True)
    views = FastSimCLRViews(3, 32, scale=(1.0, 1.0))
    with Watch():
        v = views(x)
        v.sum().backward()
    assert not syncs, syncs
    assert v.shape == (15, 3, 32, 32) and 0 <= v.min() and v.max() <= 1
    # full-size crops: a view without jitter/gray is the image or its mirror
    p = views.sample(5, 32, 32)
    p["jitter"][:] = False
    p["gray"][:] = False
    out = views.apply(x.detach(), p)
    ref = torch.where(p["flip"].view(-1, 1, 1, 1), x.detach().flip(-1), x.detach())
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_make_views_names_the_backend():
    assert isinstance(make_views(2, 32, backend="fast"), FastSimCLRViews)
    assert isinstance(make_views(2, 32, backend="kornia"), SimCLRViews)
    with pytest.raises(ValueError, match="views backend 'tv'"):
        make_views(2, 32, backend="tv")
