"""Attacks on the whole randomized defense: APGD with EOT on differentiable stand-ins, Square on the
real defense, and the best-iterate bookkeeping they share (Croce et al., ICML 2022).

A randomized test-time defense ``x -> f(reverse(x))`` has no usable gradient of its own (the
reversal's signed steps and random views), so the gradient attacks use a **stand-in**: a module
whose forward pass *is* the real defense (one fresh random draw per call) and whose backward pass
is either the identity through the reversal (``bpda``, straight-through) or back-propagation through
the unrolled reversal (``full``, :func:`~lightning_modules.attacks.adaptive.reverse_differentiable`).
pyautoattack's APGD averages ``eot`` such gradients per step (its ``eot_iter``).

**Best iterate.** Because the forward pass is the real defense, every gradient evaluation is also a
defended draw: :class:`BestIterate` watches them and keeps, per example, the iterate that fooled
the largest share of its draws (ties: the lowest mean margin), instead of the last iterate or
the one a single lucky draw misclassified. :func:`pick_best` judges a few candidates on fresh draws.

Example:
    >>> import torch
    >>> from lightning_modules.attacks.defense_attacks import BestIterate
    >>> y = torch.tensor([0, 1])
    >>> t = BestIterate(torch.zeros(2, 1), y)
    >>> t.observe(torch.ones(2, 1), torch.tensor([[0.0, 1.0], [0.0, 1.0]]))  # iterate 1 fools example 0
    >>> t.observe(2 * torch.ones(2, 1), torch.tensor([[1.0, 0.0], [1.0, 0.0]]))  # iterate 2 fools example 1
    >>> t.result()[:, 0].tolist()  # each example keeps the iterate that fooled it
    [1.0, 2.0]
"""

from __future__ import annotations

import logging
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn

from ..losses import cw_margin
from .core import check_batch, logits_of

Fn = Callable[[torch.Tensor], torch.Tensor]


def chunks(n: int, size: int) -> list[tuple[int, int]]:
    """``[start, end)`` chunks of ``size`` covering ``n`` items, a 1-item tail merged into the previous
    chunk (the reversal needs at least two images)."""
    starts = list(range(0, n, size))
    if len(starts) > 1 and n - starts[-1] < 2:
        starts.pop()
    return list(zip(starts, starts[1:] + [n]))


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``z_y - max_{j != y} z_j`` per example (negative: misclassified): the unclipped CW margin, negated."""
    return -cw_margin(logits.detach(), y, kappa=float("inf"))


class BestIterate:
    """Per example, the observed point that fooled the most defended draws (ties: lowest mean margin).

    :meth:`observe` takes ``(x_adv, logits)`` of one defended draw on the whole batch; consecutive
    calls with an identical ``x_adv`` are draws of the same iterate. Calls on other batch shapes
    (an attack's sub-batches) are ignored.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.y = y
        self.best = x.detach().clone()
        self.score = torch.full((len(x),), -1.0, device=x.device)
        self.best_margin = torch.full((len(x),), float("inf"), device=x.device)
        self._cur: Optional[torch.Tensor] = None
        self._fooled = self._margin = None
        self._n = 0

    def observe(self, x_adv: torch.Tensor, logits: torch.Tensor) -> None:
        if x_adv.shape != self.best.shape:
            return
        if self._cur is None or not torch.equal(x_adv, self._cur):
            self._flush()
            self._cur, self._n = x_adv.detach().clone(), 0
            self._fooled = torch.zeros_like(self.score)
            self._margin = torch.zeros_like(self.score)
        m = margin(logits, self.y)
        self._fooled += (m < 0).float()
        self._margin += m
        self._n += 1

    def _flush(self) -> None:
        if self._cur is None or self._n == 0:
            return
        frac, m = self._fooled / self._n, self._margin / self._n
        take = (frac > self.score) | ((frac == self.score) & (m < self.best_margin))
        self.best = torch.where(take.view(-1, *[1] * (self.best.ndim - 1)), self._cur, self.best)
        self.score = torch.where(take, frac, self.score)
        self.best_margin = torch.where(take, m, self.best_margin)
        self._cur = None

    def result(self) -> torch.Tensor:
        self._flush()
        return self.best


def pick_best(candidates: Sequence[torch.Tensor], defended: Fn, y: torch.Tensor, draws: int) -> torch.Tensor:
    """Per example, the candidate that fools the most of ``draws`` fresh defended draws."""
    judge = BestIterate(candidates[0], y)
    for c in candidates:
        with torch.no_grad():
            for _ in range(draws):
                judge.observe(c, logits_of(defended, c))
    return judge.result()


class StandIn(nn.Module):
    """``x -> logits`` whose forward pass is the real defense and whose backward pass is a surrogate.

    Args:
        model_fn: the classifier (logits).
        reverse_fn: the reversal as deployed (one random draw per call), for ``mode="bpda"``.
        reverse_diff_fn: the unrolled, differentiable reversal ``x -> x_rev``, for ``mode="full"``.
        mode: ``bpda`` (identity through the reversal) or ``full`` (through the unrolled steps).
        observe: called with ``(x, logits)`` after every forward pass (e.g. :meth:`BestIterate.observe`).
    """

    def __init__(
        self,
        model_fn: Fn,
        reverse_fn: Optional[Fn] = None,
        reverse_diff_fn: Optional[Fn] = None,
        mode: str = "bpda",
        observe: Optional[Callable[[torch.Tensor, torch.Tensor], None]] = None,
    ) -> None:
        super().__init__()
        if mode not in ("bpda", "full"):
            raise ValueError(f"unknown stand-in '{mode}'; choose bpda or full")
        if (mode == "bpda" and reverse_fn is None) or (mode == "full" and reverse_diff_fn is None):
            raise ValueError(f"the {mode} stand-in needs {'reverse_fn' if mode == 'bpda' else 'reverse_diff_fn'}")
        self.model_fn, self.reverse_fn, self.reverse_diff_fn = model_fn, reverse_fn, reverse_diff_fn
        self.mode, self.observe = mode, observe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            if self.mode == "bpda":
                xr = x + (self.reverse_fn(x.detach()) - x).detach()
            else:
                xr = self.reverse_diff_fn(x)
            z = logits_of(self.model_fn, xr).float()
        if self.observe is not None:
            self.observe(x.detach(), z.detach())
        return z


def apgd_eot(
    stand_in: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: str = "Linf",
    steps: int = 100,
    eot: int = 20,
    loss: str = "ce",
    n_targets: int = 3,
    seed: int = 0,
) -> list[torch.Tensor]:
    """pyautoattack's APGD-CE (``loss="ce"``) or targeted APGD-DLR (``loss="dlr-t"``, ``n_targets``
    target classes: the stand-in's top non-true classes on ``x``) with ``eot`` gradients per step, on
    the whole batch at once (so every row of the batch stays the same example: the stand-in's
    observer sees the whole batch every call). Returns APGD's own candidates of every run (its
    highest-loss point and its first point the stand-in misclassified), to judge beside what the
    observer kept."""
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    norm = check_batch(x, y, eps, norm)
    log = logging.getLogger("auto-attack")
    x, y = x.detach().float(), y.detach()
    if loss == "ce":
        attack = APGDAttack(
            stand_in,
            n_iter=steps,
            norm=norm,
            n_restarts=1,
            eps=float(eps),
            seed=seed,
            loss="ce",
            eot_iter=eot,
            rho=0.75,
            device=x.device,
            logger=log,
        )
        targets = [None]
    elif loss == "dlr-t":
        attack = APGDAttack_targeted(
            stand_in,
            n_iter=steps,
            norm=norm,
            n_restarts=1,
            eps=float(eps),
            seed=seed,
            eot_iter=eot,
            rho=0.75,
            n_target_classes=n_targets,
            device=x.device,
            logger=log,
        )
        with torch.no_grad():
            z = stand_in(x)
        if z.shape[1] < 4:
            raise ValueError(f"targeted APGD-DLR needs at least 4 classes, the model has {z.shape[1]}")
        order = z.sort(dim=1)[1]
        targets = [order[:, -k] for k in range(2, min(n_targets, z.shape[1] - 1) + 2)]
    else:
        raise ValueError(f"unknown APGD loss '{loss}'; choose ce or dlr-t")
    attack.init_hyperparam(x)
    torch.manual_seed(seed)
    out = []
    with torch.enable_grad():
        for t in targets:
            attack.y_target = t
            x_best, _, _, x_best_adv = attack.attack_single_run(x, y)
            out += [x_best.detach(), x_best_adv.detach()]
    return out


def square(
    defended: Fn, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "Linf", queries: int = 1000, seed: int = 0
) -> torch.Tensor:
    """pyautoattack's Square attack (margin loss, ``queries`` queries) on the real randomized defense."""
    from pyautoattack.square import SquareAttack

    norm = check_batch(x, y, eps, norm)

    def predict(xa: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(xa.device.type, enabled=False):
            return logits_of(defended, xa.float()).float()

    attack = SquareAttack(
        predict,
        norm=norm,
        n_queries=queries,
        eps=float(eps),
        p_init=0.8,
        n_restarts=1,
        seed=seed,
        verbose=False,
        device=x.device,
        resc_schedule=False,
    )
    with torch.no_grad():
        return attack.perturb(x.detach().float(), y.detach()).detach()


__all__ = ["chunks", "margin", "BestIterate", "pick_best", "StandIn", "apgd_eot", "square"]
