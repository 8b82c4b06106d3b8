"""The craft functions of the attack registry (:mod:`~lightning_modules.evaluation.registry`): each turns a
:class:`Job` (one attack on one batch) into adversarial examples. Every attack on the defense returns its
**best** iterate per example, judged on defended draws (:mod:`~lightning_modules.evaluation.best_iterate`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ..attacks import autoattack
from ..attacks.core import pgd
from ..defense.model import DefendedModel
from . import adaptive
from .best_iterate import BestIterate, pick_best
from .config import EvalConfig

Fn = Callable[[torch.Tensor], torch.Tensor]
MAO_RESTARTS = 2  # Mao et al.'s APGD-CE + FAB: 2 restarts each (their PGD: 1)


@dataclass
class Job:
    """One attack to craft on one batch: the inputs, the defense, the budget and the overrides of a sweep."""

    x: torch.Tensor
    y: torch.Tensor
    norm: str
    eps: float
    cfg: EvalConfig
    defense: DefendedModel
    params: dict = field(default_factory=dict)
    seed: int = 0
    reversal_steps: Optional[int] = None  # attacks the reversal with these steps (reversal-steps sweep)

    @property
    def ball(self) -> tuple:
        """``(x, y, eps, alpha)``, the arguments every PGD-style attack starts with."""
        return self.x, self.y, self.eps, self.cfg.attack.step_size * self.eps

    def rev(self, xa: torch.Tensor) -> torch.Tensor:
        return self.defense.reverse(xa, steps=self.reversal_steps)

    def defended(self, xa: torch.Tensor) -> torch.Tensor:
        return self.defense.defended_logits(xa, mates=self.x, steps=self.reversal_steps)

    def reverse_diff(self, tau: float) -> Fn:
        c = self.cfg
        return lambda xa: self.defense.reverse_differentiable(
            xa, c.adaptive.full_gradient_steps, tau, c.adaptive.full_gradient_checkpoint
        )

    def observer(self, tracker: BestIterate, stand_in: str) -> Optional[Callable]:
        """The tracker's ``observe``, where the stand-in's forward pass is the deployed defense (not for an
        unrolled reversal cut short by ``full_gradient_steps``)."""
        return tracker.observe if stand_in == "bpda" or self.cfg.adaptive.full_gradient_steps is None else None

    def best_of(self, tracker: BestIterate, *others: torch.Tensor) -> torch.Tensor:
        """The tracked best iterate, judged against ``others`` on ``judge_draws`` fresh defended draws."""
        cands = ([tracker.result()] if tracker.score.max() >= 0 else []) + list(others)
        return pick_best(cands, self.defended, self.y, self.cfg.scoring.judge_draws)


def _pgd(loss: str) -> Callable[[Job], torch.Tensor]:
    return lambda j: pgd(
        j.defense.model_fn, *j.ball, j.cfg.attack.steps, j.norm, loss=loss, restarts=j.cfg.attack.restarts
    )


def _apgd_classifier(j: Job) -> torch.Tensor:
    c = j.cfg
    return autoattack.apgd(
        j.defense.model_fn, j.x, j.y, j.eps, j.norm, c.attack.apgd_steps, c.attack.restarts, "ce", seed=j.seed
    )


def _autoattack(j: Job) -> torch.Tensor:
    return autoattack.autoattack(j.defense.model_fn, j.x, j.y, j.eps, j.norm, seed=j.seed)


def _apgd_fab(j: Job) -> torch.Tensor:
    kw = dict(seed=j.seed, attacks=("apgd-ce", "fab"), restarts=MAO_RESTARTS)
    return autoattack.autoattack(j.defense.model_fn, j.x, j.y, j.eps, j.norm, **kw)


def _defense_aware(j: Job) -> torch.Tensor:
    d, c, steps = j.defense, j.cfg, j.cfg.n_adaptive_steps
    marks = {max(1, steps * k // 4) for k in (1, 2, 3)}
    cands: list[torch.Tensor] = []
    on_step = lambda k, xk: cands.append(xk) if k in marks else None  # noqa: E731
    x_last = adaptive.defense_aware(
        d.model_fn, d.ssl, *j.ball, steps, j.norm, j.params["lam"], c.attack.restarts, on_step=on_step
    )
    return pick_best(cands + [x_last], j.defended, j.y, c.scoring.judge_draws)


def _bpda_eot(j: Job) -> torch.Tensor:
    t, c, m = BestIterate(j.x, j.y), j.cfg, j.defense.model_fn
    x_last = adaptive.bpda_eot(
        m, j.rev, *j.ball, c.n_adaptive_steps, j.norm, c.attack.eot, c.attack.restarts, observe=t.observe
    )
    return j.best_of(t, x_last)


def _full_gradient(j: Job) -> torch.Tensor:
    t, c = BestIterate(j.x, j.y), j.cfg
    rev, obs = j.reverse_diff(j.params["tau"]), j.observer(t, "full")
    x_last = adaptive.full_gradient(
        j.defense.model_fn, rev, *j.ball, c.n_adaptive_steps, j.norm, c.attack.eot, c.attack.restarts,
        batch_size=c.adaptive.full_gradient_batch, observe=obs,
    )  # fmt: skip
    return j.best_of(t, x_last)


def _apgd_defense(stand_in: str, loss: str) -> Callable[[Job], torch.Tensor]:
    def craft(j: Job) -> torch.Tensor:
        t, c, m = BestIterate(j.x, j.y), j.cfg, j.defense.model_fn
        obs = j.observer(t, stand_in)
        if stand_in == "bpda":
            net = adaptive.StandIn(m, j.rev, mode="bpda", observe=obs)
        else:
            net = adaptive.StandIn(m, reverse_diff_fn=j.reverse_diff(j.params["tau"]), mode="full", observe=obs)
        own = adaptive.apgd_eot(
            net, j.x, j.y, j.eps, j.norm, c.attack.apgd_steps, c.attack.eot, loss, c.attack.apgd_targets, seed=j.seed
        )
        return j.best_of(t, *own)

    return craft


def _square(j: Job) -> torch.Tensor:
    x_sq = adaptive.square(j.defended, j.x, j.y, j.eps, j.norm, j.cfg.attack.square_queries, seed=j.seed)
    return pick_best([x_sq, j.x], j.defended, j.y, j.cfg.scoring.judge_draws)


def _transfer(j: Job) -> torch.Tensor:
    c = j.cfg
    return pgd(j.defense.surrogate_fn, *j.ball, c.n_transfer_steps, j.norm, restarts=c.attack.restarts)
