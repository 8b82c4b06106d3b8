"""The attack registry: one entry per attack of the evaluation.

An :class:`Attack` says everything the evaluation needs to know about one attack: its name (as
written in :class:`~lightning_modules.evaluation.config.EvalConfig` ``attacks``), its kind
(``non-adaptive``: crafted on the classifier alone; ``adaptive``: crafted against the whole defense),
the threat models it supports, what of the defense it needs, its variants (one row each: the
lambdas of the defense-aware loss, the taus of the unrolled reversal), the settings that make up
a row's identity, its label, and its craft function. Adding an attack is one entry here plus its test.

Every adaptive attack returns its **best** iterate per example, judged on defended draws
(:mod:`lightning_modules.attacks.defense_attacks`), not its last.

Example:
    >>> from lightning_modules.evaluation.config import EvalConfig
    >>> from lightning_modules.evaluation.registry import ATTACKS
    >>> cfg = EvalConfig(eot=20, apgd_steps=100)
    >>> a = ATTACKS["apgd_ce_bpda"]
    >>> a.kind, a.label(cfg, {})
    ('adaptive', 'APGD-CE-100 + EOT-20 (BPDA: reversal straight-through)')
    >>> [ATTACKS["full_gradient"].ident(cfg, v) for v in ATTACKS["full_gradient"].variants(cfg)][:1]
    ['full_gradient20x1-a0.25-eot20-unrollall-tau0.1']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ..attacks import adaptive, autoattack, defense_attacks
from ..attacks.core import pgd
from .config import EvalConfig
from .defense import Defense

Fn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Job:
    """One attack to craft on one batch: the inputs, the defense, the budget and the overrides of a sweep."""

    x: torch.Tensor
    y: torch.Tensor
    norm: str
    eps: float
    cfg: EvalConfig
    defense: Defense
    params: dict = field(default_factory=dict)
    seed: int = 0
    reverse_fn: Optional[Fn] = None  # attacks this reversal instead (reversal-steps sweep)

    @property
    def alpha(self) -> float:
        return self.cfg.step_size * self.eps

    @property
    def rev(self) -> Fn:
        return self.reverse_fn or self.defense.reverse_fn

    def defended(self, xa: torch.Tensor) -> torch.Tensor:
        return self.defense.defended_logits(xa, self.rev, mates=self.x)

    def reverse_diff(self, tau: float) -> Fn:
        c = self.cfg
        return lambda xa: self.defense.reverse_diff_fn(xa, c.full_gradient_steps, tau, c.full_gradient_checkpoint)

    def observer(self, tracker: defense_attacks.BestIterate, stand_in: str) -> Optional[Callable]:
        """The tracker's ``observe``, where the stand-in's forward pass is the deployed defense (not for an
        unrolled reversal cut short by ``full_gradient_steps``)."""
        return tracker.observe if stand_in == "bpda" or self.cfg.full_gradient_steps is None else None

    def best_of(self, tracker: defense_attacks.BestIterate, *others: torch.Tensor) -> torch.Tensor:
        """The tracked best iterate, judged against ``others`` on ``judge_draws`` fresh defended draws."""
        cands = ([tracker.result()] if tracker.score.max() >= 0 else []) + list(others)
        return defense_attacks.pick_best(cands, self.defended, self.y, self.cfg.judge_draws)


@dataclass(frozen=True)
class Attack:
    """One attack of the evaluation (see the module doc)."""

    name: str
    kind: str  # "non-adaptive" | "adaptive"
    craft: Callable[[Job], torch.Tensor]
    label: Callable[[EvalConfig, dict], str]
    ident: Callable[[EvalConfig, dict], str]
    needs: tuple[str, ...] = ()  # Defense attributes it needs, e.g. ("reverse_fn",)
    steps_field: str = "steps"  # the EvalConfig field a steps sweep changes
    norms: tuple[str, ...] = ("Linf", "L2")
    variants: Callable[[EvalConfig], list[dict]] = lambda c: [{}]
    subset: Callable[[EvalConfig], Optional[int]] = lambda c: None  # runs on idx < subset
    partial: bool = False  # meant for a smaller subset: does not narrow the headline
    whole: bool = False  # kept on every example under the cascade (a cheap reference row of the table)

    @property
    def adaptive(self) -> bool:
        return self.kind == "adaptive"


# -- craft functions ------------------------------------------------------------------------------
def _pgd(loss: str) -> Callable[[Job], torch.Tensor]:
    def craft(j: Job) -> torch.Tensor:
        return pgd(
            j.defense.model_fn, j.x, j.y, j.eps, j.alpha, j.cfg.steps, j.norm, loss=loss, restarts=j.cfg.restarts
        )

    return craft


def _apgd_classifier(j: Job) -> torch.Tensor:
    return autoattack.apgd(
        j.defense.model_fn, j.x, j.y, j.eps, j.norm, j.cfg.apgd_steps, j.cfg.restarts, "ce", seed=j.seed
    )


def _autoattack(j: Job) -> torch.Tensor:
    return autoattack.autoattack(j.defense.model_fn, j.x, j.y, j.eps, j.norm, seed=j.seed)


MAO_RESTARTS = 2  # Mao et al.'s APGD-CE + FAB: 2 restarts each (their PGD: 1)


def _apgd_fab(j: Job) -> torch.Tensor:
    return autoattack.autoattack(
        j.defense.model_fn, j.x, j.y, j.eps, j.norm, seed=j.seed, attacks=("apgd-ce", "fab"), restarts=MAO_RESTARTS
    )


def _defense_aware(j: Job) -> torch.Tensor:
    steps = j.cfg.n_adaptive_steps
    marks = {max(1, steps * k // 4) for k in (1, 2, 3)}
    cands: list[torch.Tensor] = []
    x_last = adaptive.defense_aware(
        j.defense.model_fn,
        j.defense.ssl_fn,
        j.x,
        j.y,
        j.eps,
        j.alpha,
        steps,
        j.norm,
        j.params["lam"],
        j.cfg.restarts,
        on_step=lambda k, xk: cands.append(xk) if k in marks else None,
    )
    return defense_attacks.pick_best(cands + [x_last], j.defended, j.y, j.cfg.judge_draws)


def _bpda_eot(j: Job) -> torch.Tensor:
    t = defense_attacks.BestIterate(j.x, j.y)
    x_last = adaptive.bpda_eot(
        j.defense.model_fn,
        j.rev,
        j.x,
        j.y,
        j.eps,
        j.alpha,
        j.cfg.n_adaptive_steps,
        j.norm,
        j.cfg.eot,
        j.cfg.restarts,
        observe=t.observe,
    )
    return j.best_of(t, x_last)


def _full_gradient(j: Job) -> torch.Tensor:
    t = defense_attacks.BestIterate(j.x, j.y)
    x_last = adaptive.full_gradient(
        j.defense.model_fn,
        j.reverse_diff(j.params["tau"]),
        j.x,
        j.y,
        j.eps,
        j.alpha,
        j.cfg.n_adaptive_steps,
        j.norm,
        j.cfg.eot,
        j.cfg.restarts,
        batch_size=j.cfg.full_gradient_batch,
        observe=j.observer(t, "full"),
    )
    return j.best_of(t, x_last)


def _apgd_defense(stand_in: str, loss: str) -> Callable[[Job], torch.Tensor]:
    def craft(j: Job) -> torch.Tensor:
        t = defense_attacks.BestIterate(j.x, j.y)
        d = j.defense
        obs = j.observer(t, stand_in)
        net = (
            defense_attacks.StandIn(d.model_fn, j.rev, mode="bpda", observe=obs)
            if stand_in == "bpda"
            else defense_attacks.StandIn(
                d.model_fn, reverse_diff_fn=j.reverse_diff(j.params["tau"]), mode="full", observe=obs
            )
        )
        own = defense_attacks.apgd_eot(
            net, j.x, j.y, j.eps, j.norm, j.cfg.apgd_steps, j.cfg.eot, loss, j.cfg.apgd_targets, seed=j.seed
        )
        return j.best_of(t, *own)

    return craft


def _square(j: Job) -> torch.Tensor:
    x_sq = defense_attacks.square(j.defended, j.x, j.y, j.eps, j.norm, j.cfg.square_queries, seed=j.seed)
    return defense_attacks.pick_best([x_sq, j.x], j.defended, j.y, j.cfg.judge_draws)


def _transfer(j: Job) -> torch.Tensor:
    return pgd(
        j.defense.surrogate_fn, j.x, j.y, j.eps, j.alpha, j.cfg.n_transfer_steps, j.norm, restarts=j.cfg.restarts
    )


# -- the registry ---------------------------------------------------------------------------------
def _a(c: EvalConfig) -> str:
    return f"a{c.step_size:g}"


def _fg(c: EvalConfig) -> str:
    return f"unroll{c.full_gradient_steps or 'all'}"


_taus = lambda c: [{"tau": t} for t in c.full_gradient_taus]  # noqa: E731
_adaptive_n = lambda c: c.adaptive_n  # noqa: E731
_R = ("reverse_fn",)

ATTACKS: dict[str, Attack] = {
    a.name: a
    for a in [
        Attack(
            "pgd",
            "non-adaptive",
            _pgd("ce"),
            lambda c, v: f"PGD-{c.steps} (CE)",
            lambda c, v: f"pgd{c.steps}x{c.restarts}-{_a(c)}",
            whole=True,
        ),
        Attack(
            "cw",
            "non-adaptive",
            _pgd("cw"),
            lambda c, v: f"CW-margin PGD-{c.steps}",
            lambda c, v: f"cw{c.steps}x{c.restarts}-{_a(c)}",
        ),
        Attack(
            "apgd-ce",
            "non-adaptive",
            _apgd_classifier,
            lambda c, v: f"APGD-CE-{c.apgd_steps} (pyautoattack)",
            lambda c, v: f"apgd-ce{c.apgd_steps}x{c.restarts}",
            steps_field="apgd_steps",
        ),
        Attack(
            "autoattack",
            "non-adaptive",
            _autoattack,
            lambda c, v: "AutoAttack standard (pyautoattack)",
            lambda c, v: "autoattack-standard",
            whole=True,
        ),
        Attack(  # Mao et al.'s "AutoAttack" (cifar10_defense_rebAA.py): not the standard ensemble
            "apgd_fab",
            "non-adaptive",
            _apgd_fab,
            lambda c, v: f"APGD-CE + FAB (untargeted), {MAO_RESTARTS} restarts (pyautoattack)",
            lambda c, v: f"apgd-ce+fab-x{MAO_RESTARTS}",
        ),
        Attack(
            "defense_aware",
            "adaptive",
            _defense_aware,
            lambda c, v: f"Defense-aware PGD-{c.n_adaptive_steps} (CE - {v['lam']:g} L_ssl)",
            lambda c, v: f"defense_aware{c.n_adaptive_steps}x{c.restarts}-{_a(c)}-l{v['lam']:g}-j{c.judge_draws}",
            needs=("reverse_fn", "ssl_fn"),
            steps_field="adaptive_steps",
            variants=lambda c: [{"lam": v} for v in c.defense_aware_lambdas],
            subset=_adaptive_n,
        ),
        Attack(
            "bpda_eot",
            "adaptive",
            _bpda_eot,
            lambda c, v: f"BPDA + EOT-{c.eot} PGD-{c.n_adaptive_steps}",
            lambda c, v: f"bpda_eot{c.n_adaptive_steps}x{c.restarts}-{_a(c)}-eot{c.eot}-j{c.judge_draws}",
            needs=_R,
            steps_field="adaptive_steps",
            subset=_adaptive_n,
        ),
        Attack(
            "full_gradient",
            "adaptive",
            _full_gradient,
            lambda c, v: f"Full gradient + EOT-{c.eot} PGD-{c.n_adaptive_steps} (tau {v['tau']:g}, {_fg(c)})",
            lambda c, v: f"full_gradient{c.n_adaptive_steps}x{c.restarts}-{_a(c)}-eot{c.eot}-{_fg(c)}-tau{v['tau']:g}",
            needs=("reverse_fn", "reverse_diff_fn"),
            steps_field="adaptive_steps",
            variants=_taus,
            subset=_adaptive_n,
        ),
        Attack(
            "apgd_ce_bpda",
            "adaptive",
            _apgd_defense("bpda", "ce"),
            lambda c, v: f"APGD-CE-{c.apgd_steps} + EOT-{c.eot} (BPDA: reversal straight-through)",
            lambda c, v: f"apgd_ce_bpda{c.apgd_steps}-eot{c.eot}",
            needs=_R,
            steps_field="apgd_steps",
            subset=_adaptive_n,
        ),
        Attack(
            "apgd_dlrt_bpda",
            "adaptive",
            _apgd_defense("bpda", "dlr-t"),
            lambda c, v: f"APGD-DLR-T-{c.apgd_steps} x{c.apgd_targets} targets + EOT-{c.eot} (BPDA)",
            lambda c, v: f"apgd_dlrt_bpda{c.apgd_steps}x{c.apgd_targets}-eot{c.eot}",
            needs=_R,
            steps_field="apgd_steps",
            subset=_adaptive_n,
        ),
        Attack(
            "apgd_ce_full",
            "adaptive",
            _apgd_defense("full", "ce"),
            lambda c, v: f"APGD-CE-{c.apgd_steps} + EOT-{c.eot} (full gradient, tau {v['tau']:g})",
            lambda c, v: f"apgd_ce_full{c.apgd_steps}-eot{c.eot}-{_fg(c)}-tau{v['tau']:g}",
            needs=("reverse_fn", "reverse_diff_fn"),
            steps_field="apgd_steps",
            variants=_taus,
            subset=_adaptive_n,
        ),
        Attack(
            "apgd_dlrt_full",
            "adaptive",
            _apgd_defense("full", "dlr-t"),
            lambda c, v: (
                f"APGD-DLR-T-{c.apgd_steps} x{c.apgd_targets} targets + EOT-{c.eot} (full gradient, tau {v['tau']:g})"
            ),
            lambda c, v: f"apgd_dlrt_full{c.apgd_steps}x{c.apgd_targets}-eot{c.eot}-{_fg(c)}-tau{v['tau']:g}",
            needs=("reverse_fn", "reverse_diff_fn"),
            steps_field="apgd_steps",
            variants=_taus,
            subset=_adaptive_n,
        ),
        Attack(
            "square",
            "adaptive",
            _square,
            lambda c, v: f"Square-{c.square_queries} (gradient-free, on the randomized defense)",
            lambda c, v: f"square{c.square_queries}-j{c.judge_draws}",
            needs=_R,
            steps_field="square_queries",
            subset=lambda c: min(c.square_n, c.adaptive_n or c.square_n),
            partial=True,
        ),
        Attack(
            "transfer",
            "adaptive",
            _transfer,
            lambda c, v: f"Transfer: PGD-{c.n_transfer_steps} on an independent surrogate model",
            lambda c, v: f"transfer{c.n_transfer_steps}x{c.restarts}-{_a(c)}",
            needs=("reverse_fn", "surrogate_fn"),
            steps_field="transfer_steps",
        ),
    ]
}

# attacks whose iterations / EOT a sweep can change (the convergence checks)
SWEEPABLE = (
    "pgd",
    "cw",
    "defense_aware",
    "bpda_eot",
    "full_gradient",
    "apgd_ce_bpda",
    "apgd_dlrt_bpda",
    "apgd_ce_full",
    "apgd_dlrt_full",
)

# attacks that average gradients over draws (the EOT sweep)
EOT_ATTACKS = ("bpda_eot", "full_gradient", "apgd_ce_bpda", "apgd_dlrt_bpda", "apgd_ce_full", "apgd_dlrt_full")


def main_setting(cfg: EvalConfig, name: str) -> int:
    """The iterations (or queries) attack ``name`` runs with in the main table."""
    f = ATTACKS[name].steps_field
    return {"adaptive_steps": cfg.n_adaptive_steps, "transfer_steps": cfg.n_transfer_steps}.get(f) or getattr(cfg, f)


WHY_MISSING = {
    "reverse_fn": "the model has no reversal to attack",
    "ssl_fn": "no contrastive loss (ssl_fn) given",
    "reverse_diff_fn": "no differentiable reversal (reverse_diff_fn) given",
    "surrogate_fn": "no independent surrogate model: set transfer_from to another checkpoint (PGD on the "
    "evaluated classifier itself is not a transfer attack)",
}

__all__ = ["Attack", "Job", "ATTACKS", "SWEEPABLE", "EOT_ATTACKS", "WHY_MISSING", "main_setting"]
