"""A hand-built classifier + contrastive head on which the reversal provably helps against a
non-adaptive attack, so adaptive attacks have something to beat (used by the evaluation tests).

Images are constant colours (3 x 8 x 8): the label is the sign of ``red - green``, with margins
``m`` in ``[0.03, 0.10]``. The classifier reads the channel means **and** the image's correlation
``A`` with a checkerboard, with a large weight: PGD on the classifier alone therefore only adds
the checkerboard (the sign of its gradient is the checkerboard on every pixel) and breaks every
image at 8/255. The "views" are the image and its copy shifted by one pixel, which flips the
checkerboard; the head embeds ``[colour (no gradient), 30 A]``, so a checkerboard makes an image's
two views disagree and the reversal (descending InfoNCE) removes it: after the reversal the
non-adaptive attack is undone. Colour shifts, which the reversal cannot see, break the images with
``m < 2 * eps`` (about half at 8/255): an attack that accounts for the reversal finds them.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from lightning_modules.defense import DefendedModel
from lightning_modules.defense.reversal import ReversalConfig
from lightning_modules.nn.backbones import Classifier

SIZE = 8
CHECKER = ((torch.arange(SIZE)[:, None] + torch.arange(SIZE)[None, :]) % 2 * 2 - 1).float()


class ToyNet(nn.Module):
    def __init__(self, w_colour: float = 10.0, w_checker: float = 40.0) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)
        with torch.no_grad():
            w = torch.tensor([[w_colour, -w_colour, 0.0, w_checker], [-w_colour, w_colour, 0.0, -w_checker]]) / 2
            self.linear.weight.copy_(w)
            self.linear.bias.zero_()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean((2, 3)), (x * CHECKER.to(x.device)).mean((1, 2, 3))[:, None]], 1)


class ToyHead(nn.Module):
    def __init__(self, kappa: float = 10.0, lam: float = 30.0) -> None:
        super().__init__()
        self.kappa, self.lam = kappa, lam

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.kappa * (f[:, :3].detach() - 0.5), self.lam * f[:, 3:]], 1)


def shift_views(x: torch.Tensor, n_views: int) -> torch.Tensor:
    """View ``k`` is ``x`` rolled by ``k`` pixels along the width (view-major)."""
    return torch.cat([torch.roll(x, k, dims=-1) for k in range(n_views)])


def toy_data(n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    m = 0.03 + 0.07 * torch.rand(n, generator=g)
    s = 1 - 2 * y.float()
    b = 0.3 + 0.4 * torch.rand(n, generator=g)
    colour = torch.stack([0.5 + s * m / 2, 0.5 - s * m / 2, b], 1)
    return colour[:, :, None, None].expand(n, 3, SIZE, SIZE).contiguous(), y


def toy_fns(steps: int = 12) -> DefendedModel:
    """The defended toy: reversal eps 16/255, step 1/255, ``steps`` steps, shift views."""
    cfg = ReversalConfig(eps=16 / 255, alpha=1 / 255, steps=steps, n_views=2, temperature=0.5)
    return DefendedModel(Classifier(ToyNet()).eval(), ToyHead().eval(), cfg, views=shift_views)
