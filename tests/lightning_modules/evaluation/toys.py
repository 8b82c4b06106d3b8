"""Hand-built randomized defenses with known answers, for the evaluation's tests.

- :class:`CoinFlipDefense`: the "reversal" spoils each image on a random half of its draws, so an
  evaluation that reverses once scores ~50% while one that demands every draw scores ~0%.
- :class:`PhaseDefense`: a defense that is known to fall to EOT. The classifier's margin is
  ``c.x + b + A sin(w u.x) / w`` with ``c`` orthogonal to ``u``; the "reversal" shifts every image
  by a random phase along ``u`` (a tiny move: ``|shift| <= 2 pi / w`` along ``u / |u|^2``). The
  margin's value barely depends on the draw (``|A sin / w| <= A / w``, far below the clean margin),
  but its gradient is ``c + A cos(phase) u``: one draw's gradient points along ``u``, which cannot
  change ``c.x``, and only the average over many draws (EOT) reveals ``c``.
- :class:`MatesDefense`: a deterministic reversal that helps an image only when most of its batch
  is clean, to tell batch compositions apart.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

D = 3 * 4 * 4  # toy images are 3 x 4 x 4


class CoinFlipDefense:
    """Label 0 iff pixel (0, 0, 0) < 0.5; the reversal sets it to 0.75 on a random half of the draws."""

    @staticmethod
    def data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.full((n, 3, 4, 4), 0.25), torch.zeros(n, dtype=torch.long)

    @staticmethod
    def model_fn(x: torch.Tensor) -> torch.Tensor:
        p = x[:, 0, 0, 0]
        return torch.stack([10 * (0.5 - p), 10 * (p - 0.5)], 1)

    @staticmethod
    def reverse_fn(x: torch.Tensor) -> torch.Tensor:
        spoil = torch.rand(len(x), device=x.device) < 0.5
        out = x.clone()
        out[spoil, 0, 0, 0] = 0.75
        return out


class PhaseNet(nn.Module):
    """4 classes; class 0's logit is the margin ``c.x + b + A sin(w u.x) / w``, the others 0."""

    def __init__(self, margin: float = 0.6, amp: float = 20.0, freq: float = 100.0) -> None:
        super().__init__()
        self.register_buffer("c", torch.tensor([1.0, -1.0] * (D // 2)))
        self.register_buffer("u", torch.ones(D))
        self.b = margin - float(self.c @ torch.full((D,), 0.5))  # clean margin at x = 0.5
        self.amp, self.freq = amp, freq

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = x.flatten(1)
        m = f @ self.c + self.b + self.amp * torch.sin(self.freq * (f @ self.u)) / self.freq
        return torch.stack([m, torch.zeros_like(m), torch.zeros_like(m) - 0.1, torch.zeros_like(m) - 0.2], 1)


class PhaseDefense:
    """:class:`PhaseNet` behind a reversal that shifts each image by a random phase along ``u``."""

    def __init__(self, **kw: float) -> None:
        self.net = PhaseNet(**kw).eval()

    @staticmethod
    def data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.full((n, 3, 4, 4), 0.5), torch.zeros(n, dtype=torch.long)

    def model_fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def reverse_fn(self, x: torch.Tensor) -> torch.Tensor:
        phase = torch.rand(len(x), 1, device=x.device) * 2 * math.pi / self.net.freq
        v = self.net.u / self.net.u.square().sum()
        return (x.flatten(1) + phase * v).view_as(x)


class MatesDefense:
    """Label 0 iff the mean of the image < 0.5. The deterministic "reversal" pulls every image towards
    its batch's mean image: among clean batch-mates an attacked image is repaired, in a batch of
    attacked images it is not."""

    @staticmethod
    def model_fn(x: torch.Tensor) -> torch.Tensor:
        m = x.mean((1, 2, 3))
        return torch.stack([10 * (0.5 - m), 10 * (m - 0.5)], 1)

    @staticmethod
    def reverse_fn(x: torch.Tensor) -> torch.Tensor:
        return 0.2 * x + 0.8 * x.mean(0, keepdim=True)
