"""Kernel average pooling: the layer against a slow loop, its insertion into backbones, noise training."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from lightning_modules.methods.module import ReversalModule
from lightning_modules.nn.backbones import PreActResNet18, build_backbone
from lightning_modules.nn.kap import KernelAveragePool, insert_kap


def kap_loop(x: torch.Tensor, window: int, padding: str) -> torch.Tensor:
    """Slow reference: out[:, c] = mean of x[:, j] over the window around c, per padding rule."""
    c, p = x.shape[1], window // 2
    out = torch.empty_like(x)
    for ci in range(c):
        acc, count = torch.zeros_like(x[:, 0]), 0
        for j in range(ci - p, ci + p + 1):
            if padding == "circular":
                acc, count = acc + x[:, j % c], count + 1
            elif 0 <= j < c:
                acc, count = acc + x[:, j], count + 1
            elif padding == "zeros":
                count += 1  # a zero channel
        out[:, ci] = acc / count
    return out


@pytest.mark.parametrize("padding", ["zeros", "valid", "circular"])
@pytest.mark.parametrize("window", [3, 5])
@pytest.mark.parametrize("shape", [(2, 7, 5, 4), (3, 6)])
def test_kap_matches_loop_reference(padding, window, shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(window))
    out = KernelAveragePool(window, padding)(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, kap_loop(x, window, padding), rtol=1e-5, atol=1e-6)


def test_kap_zero_padding_values_by_hand():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1)
    out = KernelAveragePool(3)(x).flatten()
    torch.testing.assert_close(out, torch.tensor([3 / 3, 6 / 3, 9 / 3, 7 / 3]))
    out_valid = KernelAveragePool(3, "valid")(x).flatten()
    torch.testing.assert_close(out_valid, torch.tensor([1.5, 2.0, 3.0, 3.5]))


def test_kap_window_one_is_identity_and_shape_preserved():
    x = torch.randn(2, 16, 8, 8)
    for padding in ("zeros", "valid", "circular"):
        assert torch.equal(KernelAveragePool(1, padding)(x), x)
    assert KernelAveragePool(5)(x).shape == x.shape


def test_kap_channels_last_and_gradient():
    x = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    out = KernelAveragePool(3)(x)
    torch.testing.assert_close(out, kap_loop(x.detach(), 3, "zeros"))
    out.sum().backward()
    # every input channel feeds `window` outputs with weight 1/3, except the edge channels (2 of 3)
    g = x.grad[0, :, 0, 0]
    torch.testing.assert_close(g, torch.tensor([2 / 3] + [1.0] * 6 + [2 / 3]))


@pytest.mark.parametrize("bad", [0, 2, 4, -1, 2.0])
def test_kap_rejects_even_or_bad_windows(bad):
    with pytest.raises(ValueError, match="odd integer"):
        KernelAveragePool(bad)


def test_kap_rejects_unknown_padding():
    with pytest.raises(ValueError, match="unknown KAP padding 'reflect'"):
        KernelAveragePool(3, "reflect")


def test_insert_kap_on_preact_resnet18_names():
    torch.manual_seed(0)
    net = PreActResNet18(width=8).eval()
    ref = copy.deepcopy(net)
    originals = {n: net.get_submodule(n) for n in ("layer2", "layer3", "layer4")}
    assert insert_kap(net, 3, ["layer2", "layer3", "layer4"]) is net
    for name, module in originals.items():
        seq = net.get_submodule(name)
        assert isinstance(seq, nn.Sequential) and len(seq) == 2 and seq[0] is module
        assert isinstance(seq[1], KernelAveragePool) and seq[1].window == 3
    assert not isinstance(net.layer1[-1], KernelAveragePool)
    x = torch.rand(2, 3, 32, 32)
    # same weights: KAP changes the function; a window-1 KAP does not
    moved = {
        (k.replace(".", ".0.", 1) if k.startswith(("layer2.", "layer3.", "layer4.")) else k): v
        for k, v in ref.state_dict().items()
    }
    net.load_state_dict(moved)  # strict: the wrapped parameters sit one level down
    assert net(x).shape == ref(x).shape == (2, 10)
    assert not torch.allclose(net(x), ref(x))
    ident = insert_kap(copy.deepcopy(ref), 1, ["layer2", "layer3", "layer4"])
    torch.testing.assert_close(ident(x), ref(x))


def test_insert_kap_dotted_path_and_unknown_name():
    net = build_backbone("small_cnn", width=8, kap={"window": 3, "after": ["body.2"]})
    assert isinstance(net.net.body[2], nn.Sequential) and isinstance(net.net.body[2][1], KernelAveragePool)
    logits, feats = net(torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, 10) and feats.shape == (2, 32)
    with pytest.raises(ValueError, match=r"no submodule named \['layer9'\].*layer1"):
        build_backbone("preact_resnet18", width=8, kap={"window": 3, "after": ["layer2", "layer9"]})
    with pytest.raises(ValueError, match="unknown kap option"):
        build_backbone("preact_resnet18", width=8, kap={"window": 3, "after": ["layer2"], "size": 2})
    with pytest.raises(ValueError, match="at least one layer"):
        build_backbone("preact_resnet18", width=8, kap={"window": 3})


def test_build_backbone_kap_preact_names():
    net = build_backbone("preact_resnet18", width=8, kap={"window": 5, "after": ["layer2", "layer3", "layer4"]})
    kaps = {n: m for n, m in net.named_modules() if isinstance(m, KernelAveragePool)}
    assert sorted(kaps) == ["net.layer2.1", "net.layer3.1", "net.layer4.1"]
    assert all(m.window == 5 for m in kaps.values())


def test_noise_std_training_inputs():
    torch.manual_seed(0)
    m = ReversalModule("small_cnn", backbone_kwargs={"width": 8}, attack=dict(noise_std=0.1))
    x, y = torch.rand(64, 3, 32, 32), torch.randint(0, 10, (64,))
    x_in = m.train_inputs(x, y)
    d = x_in - x
    assert x_in.min() >= 0 and x_in.max() <= 1
    inner = (x > 0.3) & (x < 0.7)  # no clamping there: the noise is N(0, 0.1^2)
    assert abs(float(d[inner].std()) - 0.1) < 0.005 and abs(float(d[inner].mean())) < 0.005
    assert torch.equal(ReversalModule("small_cnn", backbone_kwargs={"width": 8}).train_inputs(x, y), x)
    with pytest.raises(ValueError, match="noise_std"):
        ReversalModule("small_cnn", backbone_kwargs={"width": 8}, attack=dict(noise_std=0.1, mode="pgd"))
    with pytest.raises(ValueError, match="noise_std"):
        ReversalModule("small_cnn", backbone_kwargs={"width": 8}, attack=dict(noise_std=-0.1))
