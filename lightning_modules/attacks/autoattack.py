"""Standard AutoAttack and APGD from pyautoattack (Croce & Hein 2020), the reference implementation.

``version="standard"`` runs APGD-CE, APGD-T (9 targets), FAB-T (9 targets) and Square (5000
queries), each on the points the previous ones did not break, for the L-inf or L2 threat model.
(torchattacks' ``AutoAttack`` is not this ensemble; we use pyautoattack.) Everything runs in fp32:
inputs are cast to float and autocast is disabled around the model.

Speed (:class:`AutoAttackSpeed`): :func:`autoattack` runs pyautoattack in larger batches than its 250 (by
default the whole input), can feed a channels-last model channels-last inputs and can ``torch.compile`` it:
the same attacks and fp32 arithmetic up to the order of sums; random starts are drawn per batch, so another
batching gives other (equally strong) draws. :func:`plain_autoattack` is the reference called plainly.

pyautoattack's state file (``state_path``) resumes a run but then returns only the adversarial examples
found after the restart, so the evaluation (:mod:`lightning_modules.evaluation`) resumes from its own
per-example store instead (it needs every adversarial example to evaluate the reversal on it).

Example:
    >>> import torch
    >>> from lightning_modules.attacks.autoattack import autoattack
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10)).eval()
    >>> x, y = torch.rand(4, 3, 8, 8), torch.randint(0, 10, (4,))
    >>> x_adv = autoattack(net, x, y, eps=8 / 255, norm="Linf", seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn

from .core import check_batch, logits_of

STANDARD_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")
#: pyautoattack's attacks beyond the standard four: untargeted FAB and APGD on the DLR loss
OTHER_ATTACKS = ("fab", "apgd-dlr")


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
    come back contiguous whatever the model's memory format (``channels_last``: inputs are handed to the
    model channels-last)."""

    def __init__(self, model: Callable, channels_last: bool = False) -> None:
        super().__init__()
        self.model, self.channels_last = model, channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            x = _ContiguousGrad.apply(x.float())
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            return logits_of(self.model, x).float()


@dataclass(frozen=True)
class AutoAttackSpeed:
    """How :func:`autoattack` runs pyautoattack (none of it changes which attacks run or their fp32 math).

    Attributes:
        batch_size: images per pyautoattack batch; None: the whole input in one batch (pyautoattack's
            own default is 250, which leaves a large GPU idle on CIFAR-size models).
        channels_last: hand the model channels-last inputs; give it channels-last weights too
            (``model.to(memory_format=torch.channels_last)``) for cuDNN's fast NHWC kernels.
        compile: ``torch.compile(model, dynamic=True)`` (the batch shrinks as points break); pays the
            compilation once per process and shape family, so it only pays off on large evaluations.

    Example:
        >>> AutoAttackSpeed(batch_size=1000, channels_last=True)
        AutoAttackSpeed(batch_size=1000, channels_last=True, compile=False)
        >>> AutoAttackSpeed(batch_size=0)
        Traceback (most recent call last):
        ...
        ValueError: AutoAttackSpeed.batch_size must be a positive number of images or None, got 0
    """

    batch_size: Optional[int] = None
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or int(self.batch_size) < 1):
            raise ValueError(
                f"AutoAttackSpeed.batch_size must be a positive number of images or None, got {self.batch_size}"
            )


def autoattack(
    model: Callable,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float = 8 / 255,
    norm: str = "Linf",
    seed: int = 0,
    speed: Optional[AutoAttackSpeed] = None,
    state_path: Optional[str | Path] = None,
    verbose: bool = False,
    attacks: Sequence[str] = STANDARD_ATTACKS,
    restarts: Optional[int] = None,
) -> torch.Tensor:
    """Standard AutoAttack (pyautoattack ``version="standard"``) on ``model`` (logits or
    ``(logits, features)``; put it in eval mode), run as ``speed`` says (default: the whole input in
    one batch). Returns ``x_adv``: the adversarial example where one was found, else ``x`` itself;
    correctness is ``model(x_adv).argmax(1) == y``. ``attacks``: a subset of the standard four, run with
    their standard settings, for quick checks; report only the whole set. With attacks of
    :data:`OTHER_ATTACKS` (e.g. Mao et al.'s ``("apgd-ce", "fab")``, untargeted FAB) or ``restarts``
    (random restarts of APGD and FAB; standard: 1) it is a custom ensemble, not AutoAttack."""
    speed = speed or AutoAttackSpeed()
    if speed.compile:
        model = torch.compile(model, dynamic=True)
    net = _Logits(model, speed.channels_last)
    return _run_standard(net, x, y, eps, norm, seed, speed.batch_size or len(x), state_path, verbose, attacks, restarts)


def plain_autoattack(
    model: Callable,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float = 8 / 255,
    norm: str = "Linf",
    seed: int = 0,
    batch_size: int = 250,
    attacks: Sequence[str] = STANDARD_ATTACKS,
) -> torch.Tensor:
    """pyautoattack called plainly: its standard ``AutoAttack`` on ``model`` as given (only a model that
    returns ``(logits, features)`` is reduced to its logits), its default batch of 250: the reference
    that :class:`AutoAttackSpeed` settings are timed against. Give it a contiguous (NCHW) fp32 model."""
    return _run_standard(_LogitsOnly(model), x, y, eps, norm, seed, batch_size, None, False, attacks)


class _LogitsOnly(nn.Module):
    """``x -> logits`` of a model returning ``(logits, features)``, nothing else changed."""

    def __init__(self, model: Callable) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(self.model, x)


def _run_standard(net, x, y, eps, norm, seed, batch_size, state_path, verbose, attacks, restarts=None) -> torch.Tensor:
    """pyautoattack's standard ``AutoAttack`` on ``net`` (arguments: :func:`autoattack`)."""
    from pyautoattack import AutoAttack

    norm = check_batch(x, y, eps, norm)
    attacks = list(attacks)
    known = STANDARD_ATTACKS + OTHER_ATTACKS
    if not attacks or any(a not in known for a in attacks):
        raise ValueError(f"AutoAttack attacks must be a subset of {list(known)}, got {attacks}")
    if restarts is not None and int(restarts) < 1:
        raise ValueError(f"AutoAttack restarts must be >= 1, got {restarts}")

    logger = logging.getLogger("auto-attack")
    level = logger.level
    if not verbose:
        logger.setLevel(logging.WARNING)
    try:
        adversary = AutoAttack(net, norm=norm, eps=float(eps), seed=seed, version="standard", device=x.device)
        adversary.attacks_to_run = attacks  # a subset keeps the standard settings (restarts, targets, queries)
        if restarts is not None:  # after the standard version's settings (which set 1)
            adversary.apgd.n_restarts = adversary.fab.n_restarts = int(restarts)
        adversary.verbose = verbose
        state = Path(state_path) if state_path is not None else None
        x_adv, _ = adversary.run_standard_evaluation(
            x.detach().float().contiguous(), y.detach(), batch_size=batch_size, state_path=state
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
    fixed = dict(eot_iter=1, rho=0.75, device=x.device, logger=logging.getLogger("auto-attack"))
    attack = APGDAttack(
        _Logits(model), n_iter=steps, norm=norm, n_restarts=restarts, eps=float(eps), seed=seed, loss=loss, **fixed
    )
    with torch.enable_grad():
        return attack.perturb(x.detach().float().contiguous(), y.detach()).detach()


__all__ = ["STANDARD_ATTACKS", "AutoAttackSpeed", "autoattack", "plain_autoattack", "apgd"]
