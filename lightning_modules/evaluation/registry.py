"""The attack registry: one entry per attack of the evaluation.

An :class:`Attack` says everything the evaluation needs to know about one attack: its name (as
written in :class:`~lightning_modules.evaluation.config.EvalConfig` ``attacks``), its kind
(``non-adaptive``: crafted on the classifier alone; ``adaptive``: crafted against the whole defense),
the threat models it supports, what of the defense it needs, its variants (one row each: the
lambdas of the defense-aware loss, the taus of the unrolled reversal), the settings that make up
a row's identity, its label, and its craft function. Adding an attack is one entry here plus its test.

Every adaptive attack returns its **best** iterate per example, judged on defended draws
(:mod:`lightning_modules.evaluation.best_iterate`), not its last.

Example:
    >>> from lightning_modules.evaluation.config import EvalConfig
    >>> from lightning_modules.evaluation.registry import ATTACKS
    >>> cfg = EvalConfig(attack={"eot": 20, "apgd_steps": 100})
    >>> a = ATTACKS["apgd_ce_bpda"]
    >>> a.kind, a.label(cfg, {}), a.ident(cfg, {}), a.eot
    ('adaptive', 'APGD-CE-100 + EOT-20 (BPDA: reversal straight-through)', 'apgd_ce_bpda100-eot20', True)
    >>> [ATTACKS["full_gradient"].ident(cfg, v) for v in ATTACKS["full_gradient"].variants(cfg)][:1]
    ['full_gradient20x1-a0.25-eot20-unrollall-tau0.1']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .config import EvalConfig
from .crafts import (
    MAO_RESTARTS,
    Job,
    _apgd_classifier,
    _apgd_defense,
    _apgd_fab,
    _autoattack,
    _bpda_eot,
    _defense_aware,
    _full_gradient,
    _pgd,
    _square,
    _transfer,
)

# How a row's identity writes each setting after the attack's name (the first, its iterations, bare).
IDENT = {
    "restarts": "x{}",
    "apgd_targets": "x{}",
    "step_size": "-a{:g}",
    "eot": "-eot{}",
    "unroll": "-unroll{}",
    "lam": "-l{:g}",
    "tau": "-tau{:g}",
    "judge_draws": "-j{}",
}
# Where each setting of a label or identity lives in EvalConfig (a sweep changes it there).
SETTINGS = {
    **{k: f"attack.{k}" for k in ("steps", "restarts", "step_size", "apgd_steps", "apgd_targets", "eot")},
    "square_queries": "attack.square_queries",
    "judge_draws": "scoring.judge_draws",
    "adaptive_steps": "adaptive.adaptive_steps",
    "transfer_steps": "adaptive.transfer_steps",
    "unroll": "adaptive.full_gradient_steps",
}
VARIANTS = {"lam": "adaptive.defense_aware_lambdas", "tau": "adaptive.full_gradient_taus"}  # one row per value


def values(cfg: EvalConfig, variant: dict) -> dict:
    """A row's settings by the short names its label and identity use (defaults resolved)."""
    v = {k: cfg.get(path) for k, path in SETTINGS.items()}
    v.update(adaptive_steps=cfg.n_adaptive_steps, transfer_steps=cfg.n_transfer_steps, unroll=v["unroll"] or "all")
    return {**v, **variant}


@dataclass(frozen=True)
class Attack:
    """One attack of the evaluation (see the module doc).

    Attributes:
        name, kind: as written in ``attacks``; ``non-adaptive`` or ``adaptive``.
        craft: the craft function.
        title: the row's label, a template over :func:`values` (``"PGD-{steps} (CE)"``).
        settings: the row's identity (its key): the name (or ``tag``), then each setting as :data:`IDENT` writes it.
        needs: what of the defense it needs (:data:`WHY_MISSING`).
        steps: the setting a steps sweep changes (None: no steps or eps sweep).
        variant: ``lam`` or ``tau``: one row per value of :data:`VARIANTS`.
        subset_of: settings whose smallest (not None) is the row's subset (``idx < subset``).
        partial: meant for a smaller subset: does not narrow the headline.
        whole: kept on every example under the cascade (a cheap reference row of the table).
        reversal_sweep: may run in the reversal-steps sweep.
        default: in ``attacks`` when it is not given.
    """

    name: str
    kind: str
    craft: Callable[[Job], torch.Tensor]
    title: str
    settings: tuple[str, ...] = ()
    tag: str = ""
    needs: tuple[str, ...] = ()
    steps: Optional[str] = None
    norms: tuple[str, ...] = ("Linf", "L2")
    variant: str = ""
    subset_of: tuple[str, ...] = ()
    partial: bool = False
    whole: bool = False
    reversal_sweep: bool = False
    default: bool = True

    @property
    def adaptive(self) -> bool:
        return self.kind == "adaptive"

    @property
    def eot(self) -> bool:
        """It averages gradients over draws (the EOT sweep)."""
        return "eot" in self.settings

    def label(self, cfg: EvalConfig, variant: dict) -> str:
        return self.title.format(**values(cfg, variant))

    def ident(self, cfg: EvalConfig, variant: dict) -> str:
        v = values(cfg, variant)
        return (self.tag or self.name) + "".join(
            (IDENT[s] if i else "{}").format(v[s]) for i, s in enumerate(self.settings)
        )

    def variants(self, cfg: EvalConfig) -> list[dict]:
        return [{self.variant: x} for x in cfg.get(VARIANTS[self.variant])] if self.variant else [{}]

    def subset(self, cfg: EvalConfig) -> Optional[int]:
        ns = [n for n in (cfg.get(path) for path in self.subset_of) if n is not None]
        return min(ns) if ns else None


N, A, N_ADAPTIVE = "non-adaptive", "adaptive", ("adaptive.adaptive_n",)
PGD = ("restarts", "step_size")  # a PGD attack's identity after its steps
R, SSL, DIFF = ("reverse_fn",), ("reverse_fn", "ssl_fn"), ("reverse_fn", "reverse_diff_fn")
_ON_DEFENSE = dict(steps="adaptive_steps", subset_of=N_ADAPTIVE)
_FULL = ("eot", "unroll", "tau")


def _apgd(name: str, stand_in: str, loss: str, title: str) -> Attack:
    """An APGD attack on the defense: ``ce`` or targeted ``dlr-t``, through the ``bpda`` or the ``full`` stand-in."""
    full = stand_in == "full"
    settings = ("apgd_steps", *(("apgd_targets",) if loss == "dlr-t" else ()), *(_FULL if full else ("eot",)))
    kw = dict(needs=DIFF if full else R, variant="tau" if full else "", steps="apgd_steps", subset_of=N_ADAPTIVE)
    return Attack(name, A, _apgd_defense(stand_in, loss), title, settings, **kw)


ATTACKS: dict[str, Attack] = {
    a.name: a
    for a in [
        Attack(
            "pgd", N, _pgd("ce"), "PGD-{steps} (CE)", ("steps", *PGD), steps="steps", whole=True, reversal_sweep=True
        ),
        Attack("cw", N, _pgd("cw"), "CW-margin PGD-{steps}", ("steps", *PGD), steps="steps"),
        Attack("apgd-ce", N, _apgd_classifier, "APGD-CE-{apgd_steps} (pyautoattack)", ("apgd_steps", "restarts")),
        Attack(
            "autoattack", N, _autoattack, "AutoAttack standard (pyautoattack)", tag="autoattack-standard", whole=True
        ),
        Attack(  # Mao et al.'s "AutoAttack" (cifar10_defense_rebAA.py): not the standard ensemble
            "apgd_fab",
            N,
            _apgd_fab,
            f"APGD-CE + FAB (untargeted), {MAO_RESTARTS} restarts (pyautoattack)",
            tag=f"apgd-ce+fab-x{MAO_RESTARTS}",
            default=False,
        ),
        Attack(
            "defense_aware",
            A,
            _defense_aware,
            "Defense-aware PGD-{adaptive_steps} (CE - {lam:g} L_ssl)",
            ("adaptive_steps", *PGD, "lam", "judge_draws"),
            needs=SSL,
            variant="lam",
            **_ON_DEFENSE,
        ),
        Attack(
            "bpda_eot",
            A,
            _bpda_eot,
            "BPDA + EOT-{eot} PGD-{adaptive_steps}",
            ("adaptive_steps", *PGD, "eot", "judge_draws"),
            needs=R,
            reversal_sweep=True,
            **_ON_DEFENSE,
        ),
        Attack(
            "full_gradient",
            A,
            _full_gradient,
            "Full gradient + EOT-{eot} PGD-{adaptive_steps} (tau {tau:g}, unroll{unroll})",
            ("adaptive_steps", *PGD, *_FULL),
            needs=DIFF,
            variant="tau",
            **_ON_DEFENSE,
        ),
        _apgd("apgd_ce_bpda", "bpda", "ce", "APGD-CE-{apgd_steps} + EOT-{eot} (BPDA: reversal straight-through)"),
        _apgd("apgd_dlrt_bpda", "bpda", "dlr-t", "APGD-DLR-T-{apgd_steps} x{apgd_targets} targets + EOT-{eot} (BPDA)"),
        _apgd("apgd_ce_full", "full", "ce", "APGD-CE-{apgd_steps} + EOT-{eot} (full gradient, tau {tau:g})"),
        _apgd(
            "apgd_dlrt_full",
            "full",
            "dlr-t",
            "APGD-DLR-T-{apgd_steps} x{apgd_targets} targets + EOT-{eot} (full gradient, tau {tau:g})",
        ),
        Attack(
            "square",
            A,
            _square,
            "Square-{square_queries} (gradient-free, on the randomized defense)",
            ("square_queries", "judge_draws"),
            needs=R,
            subset_of=("attack.square_n", *N_ADAPTIVE),
            partial=True,
        ),
        Attack(
            "transfer",
            A,
            _transfer,
            "Transfer: PGD-{transfer_steps} on an independent surrogate model",
            ("transfer_steps", *PGD),
            needs=("reverse_fn", "surrogate_fn"),
        ),
    ]
}

WHY_MISSING = {  # per need of an attack: why it cannot run on this defense
    "reverse_fn": "the model has no reversal to attack",
    "ssl_fn": "no contrastive loss (ssl_fn) given",
    "reverse_diff_fn": "no differentiable reversal (reverse_diff_fn) given",
    "surrogate_fn": "no independent surrogate model: set transfer_from to another checkpoint (PGD on the "
    "evaluated classifier itself is not a transfer attack)",
}


def main_setting(cfg: EvalConfig, name: str) -> int:
    """The iterations attack ``name`` runs with in the main table (the setting its steps sweep changes)."""
    return values(cfg, {})[ATTACKS[name].steps]


def validate(cfg: EvalConfig) -> EvalConfig:
    """``cfg`` with its attack names checked against the registry (``attacks`` None: every default attack)."""
    if cfg.attacks is None:
        cfg = cfg.replace("attacks", [n for n, a in ATTACKS.items() if a.default])
    swept = [n for n, a in ATTACKS.items() if a.steps]
    s = cfg.sweeps
    for what, names, allowed in (
        ("attacks", cfg.attacks, list(ATTACKS)),
        ("scoring.composition_attacks", cfg.scoring.composition_attacks or [], ["clean", *cfg.attacks]),
        ("sweeps.eps_sweep_attacks", s.eps_sweep_attacks, swept),
        ("sweeps.steps_sweep_attacks", s.steps_sweep_attacks, swept),
        ("sweeps.eot_sweep_attacks", s.eot_sweep_attacks, [n for n, a in ATTACKS.items() if a.eot]),
        (
            "sweeps.reversal_sweep_attacks",
            s.reversal_sweep_attacks,
            [n for n, a in ATTACKS.items() if a.reversal_sweep],
        ),
    ):
        bad = [n for n in names if n not in allowed]
        if bad:
            import difflib

            hints = {b: difflib.get_close_matches(b, allowed, n=1) for b in bad}
            near = "; ".join(f"'{b}': did you mean '{h[0]}'?" for b, h in hints.items() if h)
            raise ValueError(f"unknown {what} {bad}; choose from {allowed}" + (f" ({near})" if near else ""))
    return cfg


__all__ = ["Attack", "Job", "ATTACKS", "WHY_MISSING", "main_setting", "validate", "values"]
