"""Standard AutoAttack and APGD from pyautoattack (Croce & Hein 2020), the reference implementation.

``version="standard"`` runs APGD-CE, APGD-T (9 targets), FAB-T (9 targets) and Square (5000
queries), each on the points the previous ones did not break, for the L-inf or L2 threat model.
(torchattacks' ``AutoAttack`` is not this ensemble; we use pyautoattack.) Everything runs in fp32:
inputs are cast to float and autocast is disabled around the model.

pyautoattack can write a state file (``state_path``) to resume an interrupted run; a restored run
returns only the adversarial examples found after the restart, so the evaluation
(:mod:`lightning_modules.evaluation`) resumes from its own per-example store, batch by batch,
instead (it needs every adversarial example to also evaluate the reversal on it).

Example:
    >>> import torch
    >>> from lightning_modules.attacks.autoattack import autoattack
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10)).eval()
    >>> x, y = torch.rand(4, 3, 8, 8), torch.randint(0, 10, (4,))
    >>> x_adv = autoattack(net, x, y, eps=8 / 255, norm="Linf", seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn

from .core import check_batch, logits_of

STANDARD_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward returns a contiguous gradient: pyautoattack ``view``s input gradients, and a
    channels-last model (``channels_last: true``) hands back channels-last ones, which ``view`` refuses."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


class _Logits(nn.Module):
    """``x -> logits`` in fp32 for a model returning logits or ``(logits, features)``; input gradients
    come back contiguous whatever the model's memory format."""

    def __init__(self, model: Callable) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return logits_of(self.model, _ContiguousGrad.apply(x.float())).float()


def autoattack(
    model: Callable,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float = 8 / 255,
    norm: str = "Linf",
    seed: int = 0,
    batch_size: Optional[int] = None,
    state_path: Optional[str | Path] = None,
    verbose: bool = False,
) -> torch.Tensor:
    """Standard AutoAttack (pyautoattack ``version="standard"``) on ``model`` (logits or
    ``(logits, features)``; put it in eval mode). Returns ``x_adv``: the adversarial example where
    one was found, else ``x`` itself; correctness is ``model(x_adv).argmax(1) == y``."""
    from pyautoattack import AutoAttack

    norm = check_batch(x, y, eps, norm)
    logger = logging.getLogger("auto-attack")
    level = logger.level
    if not verbose:
        logger.setLevel(logging.WARNING)
    try:
        net = _Logits(model)
        adversary = AutoAttack(net, norm=norm, eps=float(eps), seed=seed, version="standard", device=x.device)
        adversary.verbose = verbose
        x_adv, _ = adversary.run_standard_evaluation(
            x.detach().float().contiguous(),
            y.detach(),
            batch_size=batch_size or len(x),
            state_path=Path(state_path) if state_path is not None else None,
        )
    finally:
        logger.setLevel(level)
    return x_adv.detach()


def apgd(
    model: Callable,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float = 8 / 255,
    norm: str = "Linf",
    steps: int = 100,
    restarts: int = 1,
    loss: str = "ce",
    seed: int = 0,
) -> torch.Tensor:
    """APGD (pyautoattack's ``APGDAttack``) on ``loss`` (``ce`` or ``dlr``), ``steps`` iterations,
    ``restarts`` random restarts; returns ``x_adv`` (``x`` where no adversarial example was found)."""
    from pyautoattack.autopgd_base import APGDAttack

    norm = check_batch(x, y, eps, norm)
    if loss not in ("ce", "dlr"):
        raise ValueError(f"APGD loss must be 'ce' or 'dlr', got '{loss}'")
    attack = APGDAttack(
        _Logits(model),
        n_iter=steps,
        norm=norm,
        n_restarts=restarts,
        eps=float(eps),
        seed=seed,
        loss=loss,
        eot_iter=1,
        rho=0.75,
        device=x.device,
        logger=logging.getLogger("auto-attack"),
    )
    with torch.enable_grad():
        return attack.perturb(x.detach().float().contiguous(), y.detach()).detach()


__all__ = ["STANDARD_ATTACKS", "autoattack", "apgd"]
