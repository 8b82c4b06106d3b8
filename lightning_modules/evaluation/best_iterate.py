"""The best iterate of an attack on the randomized defense (Croce et al., ICML 2022).

The stand-ins' forward pass is the real defense (:class:`~lightning_modules.evaluation.adaptive.StandIn`),
so every gradient evaluation is also a defended draw: :class:`BestIterate` watches them and keeps, per
example, the iterate that fooled the largest share of its draws (ties: the lowest mean margin), instead
of the last iterate or the one a single lucky draw misclassified. :func:`pick_best` judges a few
candidates on fresh draws.

Example:
    >>> import torch
    >>> from lightning_modules.evaluation.best_iterate import BestIterate
    >>> y = torch.tensor([0, 1])
    >>> t = BestIterate(torch.zeros(2, 1), y)
    >>> t.observe(torch.ones(2, 1), torch.tensor([[0.0, 1.0], [0.0, 1.0]]))  # iterate 1 fools example 0
    >>> t.observe(2 * torch.ones(2, 1), torch.tensor([[1.0, 0.0], [1.0, 0.0]]))  # iterate 2 fools example 1
    >>> t.result()[:, 0].tolist()  # each example keeps the iterate that fooled it
    [1.0, 2.0]
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from ..attacks.core import logits_of
from ..losses import cw_margin

Fn = Callable[[torch.Tensor], torch.Tensor]


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
