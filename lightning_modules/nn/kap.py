"""Kernel average pooling (KAP; Bashivan et al., "Learning robust kernel ensembles with kernel
average pooling", 2022/2023).

A KAP layer replaces every activation channel by the mean of itself and its neighbours along the channel
(kernel) axis (an odd ``window``, no parameters, shapes unchanged), which pushes neighbouring kernels to
learn similar features and act as ensembles.

**Channel edges.** ``padding="zeros"`` (the default; our reading of the paper's "same"-padded pooling over
kernels) pads with zeros and divides by ``window`` everywhere; ``"valid"`` averages only over the
neighbours that exist; ``"circular"`` treats the channels as a ring.

Example:
    >>> import torch
    >>> from lightning_modules.nn.kap import KernelAveragePool, insert_kap
    >>> kap = KernelAveragePool(3)
    >>> x = torch.arange(4.0).view(1, 4, 1, 1)
    >>> (3 * kap(x)).flatten().round().tolist()    # zero padding: [0+0+1, 0+1+2, 1+2+3, 2+3+0] / 3
    [1.0, 3.0, 6.0, 5.0]
    >>> from lightning_modules.nn.backbones import PreActResNet18
    >>> net = insert_kap(PreActResNet18(width=8), window=3, after=["layer2", "layer3"])
    >>> type(net.layer2[1]).__name__
    'KernelAveragePool'
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

PADDINGS = ("zeros", "valid", "circular")


class KernelAveragePool(nn.Module):
    """Mean over a sliding window of ``window`` neighbouring channels (dim 1) of any ``(N, C, ...)`` tensor,
    same output shape; ``window=1`` is the identity. See the module docstring for ``padding``."""

    def __init__(self, window: int = 3, padding: str = "zeros") -> None:
        super().__init__()
        if not isinstance(window, int) or window < 1 or window % 2 == 0:
            raise ValueError(f"KAP window must be an odd integer >= 1 (a centred window), got {window!r}")
        if padding not in PADDINGS:
            raise ValueError(f"unknown KAP padding '{padding}'; choose one of {list(PADDINGS)}")
        self.window, self.padding = window, padding

    def extra_repr(self) -> str:
        return f"window={self.window}, padding={self.padding}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.window == 1:
            return x
        if x.ndim < 2:
            raise ValueError(f"KAP needs an (N, C, ...) input, got shape {tuple(x.shape)}")
        n, c = x.shape[:2]
        if self.window > c and self.padding == "circular":
            raise ValueError(f"circular KAP window {self.window} is wider than the {c} channels")
        p = self.window // 2
        # (N, C, ...) -> (N, 1, C, S): a (window x 1) average pool slides over the channel axis only
        v = x.reshape(n, 1, c, -1)
        if self.padding == "circular":
            v = F.pad(v, (0, 0, p, p), mode="circular")
            out = F.avg_pool2d(v, (self.window, 1), stride=1)
        else:
            out = F.avg_pool2d(v, (self.window, 1), stride=1, padding=(p, 0), count_include_pad=self.padding == "zeros")
        return out.reshape(x.shape)


def insert_kap(net: nn.Module, window: int = 3, after: Sequence[str] = (), padding: str = "zeros") -> nn.Module:
    """Put a :class:`KernelAveragePool` after each named submodule of ``net`` (in place; returns ``net``).

    Names are dotted paths as in ``net.named_modules()`` (``layer2``, ``body.2``). Each module
    ``m`` becomes ``nn.Sequential(m, KernelAveragePool(window, padding))``, so its parameters move
    one level down in the state dict (``layer2.0.bn1`` -> ``layer2.0.0.bn1``): checkpoints of a
    KAP network load only into a KAP network with the same ``after``.
    """
    if isinstance(after, str):
        after = [after]
    modules = dict(net.named_modules())
    unknown = [a for a in after if a not in modules or a == ""]
    if unknown:
        top = [n for n, _ in net.named_children()]
        raise ValueError(
            f"insert_kap: {type(net).__name__} has no submodule named {unknown}; "
            f"its top-level modules are {top} (use dotted paths for deeper ones)"
        )
    if len(set(after)) != len(after):
        raise ValueError(f"insert_kap: repeated names in after={list(after)}")
    for path in after:
        parent, _, name = path.rpartition(".")
        setattr(net.get_submodule(parent), name, nn.Sequential(modules[path], KernelAveragePool(window, padding)))
    return net


def apply_kap_config(net: nn.Module, kap: dict) -> nn.Module:
    """``insert_kap`` from a config dict ``{window, after, padding}`` with a clear error for other keys."""
    if not isinstance(kap, dict):
        raise TypeError(f"kap must be a mapping like {{window: 3, after: [layer2]}}, got {type(kap).__name__}")
    extra = set(kap) - {"window", "after", "padding"}
    if extra:
        raise ValueError(f"unknown kap option(s) {sorted(extra)}; expected window, after, padding")
    if not kap.get("after"):
        raise ValueError("kap.after must name at least one layer (e.g. [layer2, layer3, layer4])")
    return insert_kap(net, int(kap.get("window", 3)), list(kap["after"]), kap.get("padding", "zeros"))


__all__ = ["KernelAveragePool", "insert_kap", "apply_kap_config", "PADDINGS"]
