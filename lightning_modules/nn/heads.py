"""Projection heads.

Example:
    >>> import torch
    >>> from lightning_modules.nn.heads import ContrastiveHead
    >>> ContrastiveHead(512, 512, 128)(torch.randn(4, 512)).shape
    torch.Size([4, 128])
"""

from __future__ import annotations

import torch
import torch.nn as nn


class ContrastiveHead(nn.Sequential):
    """SimCLR projection MLP on penultimate features: Linear, BatchNorm, ReLU, Linear."""

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128) -> None:
        hidden = nn.Linear(in_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)
        super().__init__(*hidden, nn.Linear(hidden_dim, out_dim))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return super().forward(feats.float())
