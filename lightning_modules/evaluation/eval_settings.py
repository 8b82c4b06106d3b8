"""The groups of :class:`~lightning_modules.evaluation.config.EvalConfig`, each a small dataclass checked
when it is built: a bad value fails naming the setting with its group (``sweeps.eps_sweep_n must be >= 1``).
Budgets are in ``[0, 1]`` pixel units or strings like ``"8/255"``. Attack names are checked by the
registry (:func:`~lightning_modules.evaluation.registry.validate`), which knows the attacks.

Example:
    >>> SweepSettings(eps_sweep=["8/255", 0, "8/255"]).eps_sweep
    [0.0, 0.03137254901960784]
    >>> SweepSettings(eps_sweep_n=0)
    Traceback (most recent call last):
    ...
    ValueError: sweeps.eps_sweep_n must be >= 1, got 0
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

from ..attacks.core import ThreatModel, check_eps
from ..util import parse_eps


def _at_least(group: str, obj: Any, least: int, *names: str, optional: bool = False) -> None:
    for name in names:
        v = getattr(obj, name)
        if (v is not None or not optional) and v < least:
            raise ValueError(f"{group}.{name} must be >= {least}{' or null' if optional else ''}, got {v}")


def _unique(values: list, kind: type = float, ordered: bool = False) -> list:
    return sorted({kind(v) for v in values}) if ordered else [kind(v) for v in dict.fromkeys(values)]


@dataclass
class ScoringSettings:
    """How a row is scored.

    Attributes:
        draws: every "with reversal" result reverses the input this many times with independent
            randomness; an example counts as correct only if it is correct on every draw.
        composition: extra "with" columns for the rows at the main budgets: ``clean_mates`` (each
            attacked image reversed among clean batch-mates) and ``batch<N>`` (the reversal on
            batches of N images). The headline takes the worst.
        composition_attacks: the rows that get them: ``clean`` and names of ``attacks`` (default: all).
        mates_groups: ``clean_mates`` splits a batch into this many groups; each group's attacked
            images are reversed among the other groups' clean images (one reversal per group).
        judge_draws: defended draws that judge the candidate iterates of an attack on the defense
            (each keeps its best iterate per example, not its last).
        reversal_per_threat: each row's reversal gets the budget its threat model asks for
            (:meth:`~lightning_modules.reversal.ReversalConfig.for_threat`: an L2 reversal on L2 rows;
            ``budget_factor`` x the row's eps for the ``mao2021`` recipe); False: the reversal as configured.
        cascade: AutoAttack's rule for the headline: a main-table row at a threat model's budget
            (attacks in the order of ``attacks``: put cheap ones first) runs only on the examples still
            robust in the worst case so far (clean and the main rows before it, without or with the
            reversal), as one batch of those examples, and scores the all-draws rule stopping after
            an example's first wrong draw; PGD and AutoAttack on the classifier stay whole (the table's
            references), and the steps / EOT sweeps of an attack on the defense run on the examples
            the main rows left robust. Such a row's n is its subset. False: every row attacks every example.
        draws_in_one_call: the draws (and the blocks of a batch composition) of a batch are one reversal
            of the batch repeated, each copy contrasting only with itself (same distribution as separate
            calls). False: one call per draw.
        seed: seeds every (row, batch).
    """

    draws: int = 5
    composition: list[str] = field(default_factory=lambda: ["clean_mates", "batch2", "batch16"])
    composition_attacks: Optional[list[str]] = None
    mates_groups: int = 8
    judge_draws: int = 2
    reversal_per_threat: bool = True
    cascade: bool = False
    draws_in_one_call: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        _at_least("scoring", self, 1, "draws", "mates_groups", "judge_draws")
        for c in self.composition:
            if c != "clean_mates" and not (c.startswith("batch") and c[5:].isdigit() and int(c[5:]) >= 2):
                raise ValueError(
                    f"unknown scoring.composition '{c}'; use clean_mates or batch<N> with N >= 2 (batch2, batch16)"
                )


@dataclass
class AttackSettings:
    """The iterations of the attacks (on the classifier and, unless ``adaptive`` says otherwise, on the defense).

    Attributes:
        steps, restarts, step_size: PGD / CW iterations, random restarts, step as a fraction of eps.
        apgd_steps: APGD iterations (on the classifier and on the defense).
        apgd_targets: target classes of the targeted APGD-DLR on the defense.
        eot: gradients averaged per step (EOT) in the attacks on the defense.
        square_queries, square_n: Square's query budget and its examples (``idx < square_n``).
    """

    steps: int = 20
    restarts: int = 1
    step_size: float = 0.25
    apgd_steps: int = 100
    apgd_targets: int = 3
    eot: int = 20
    square_queries: int = 1000
    square_n: int = 100

    def __post_init__(self) -> None:
        _at_least(
            "attack", self, 1, "steps", "restarts", "apgd_steps", "apgd_targets", "eot", "square_queries", "square_n"
        )
        if not 0 < self.step_size <= 1:
            raise ValueError(f"attack.step_size is a fraction of eps in (0, 1], got {self.step_size}")


@dataclass
class AdaptiveSettings:
    """The attacks on the whole defense.

    Attributes:
        adaptive_steps: iterations of the PGD attacks on the defense (default ``attack.steps``).
        adaptive_n: attacks on the defense run on examples with ``idx < adaptive_n`` (default all).
        defense_aware_lambdas: ``lambda`` of the defense-aware loss ``CE - lambda L_ssl``; one row each.
        full_gradient_taus: ``tau`` of the smooth sign in the unrolled reversal; one row each
            (for the PGD and the APGD full-gradient attacks).
        full_gradient_steps: reversal steps the full-gradient attacks unroll (default: all).
        full_gradient_checkpoint: recompute each unrolled step on the backward pass (saves memory).
        full_gradient_batch: the PGD full-gradient attack runs in chunks of this many images.
        transfer_steps: PGD steps on the surrogate (default ``2 * attack.steps``).
    """

    adaptive_steps: Optional[int] = None
    adaptive_n: Optional[int] = None
    defense_aware_lambdas: list[float] = field(default_factory=lambda: [0.1, 1.0, 10.0])
    full_gradient_taus: list[float] = field(default_factory=lambda: [0.1, 0.3, 1.0])
    full_gradient_steps: Optional[int] = None
    full_gradient_checkpoint: bool = True
    full_gradient_batch: Optional[int] = None
    transfer_steps: Optional[int] = None

    def __post_init__(self) -> None:
        names = ("adaptive_steps", "adaptive_n", "full_gradient_steps", "transfer_steps")
        _at_least("adaptive", self, 1, *names, optional=True)
        _at_least("adaptive", self, 2, "full_gradient_batch", optional=True)
        for name in ("defense_aware_lambdas", "full_gradient_taus"):
            if not getattr(self, name):
                raise ValueError(f"adaptive.{name} needs at least one value")
        if any(t < 0 for t in self.full_gradient_taus):
            raise ValueError(f"adaptive.full_gradient_taus must be >= 0, got {self.full_gradient_taus}")
        self.defense_aware_lambdas = _unique(self.defense_aware_lambdas)
        self.full_gradient_taus = _unique(self.full_gradient_taus)


@dataclass
class SweepSettings:
    """The sweeps: accuracy vs eps, the convergence checks (steps, EOT; at the first threat model) and
    accuracy vs reversal steps; an empty list turns a sweep off.

    Attributes:
        eps_sweep, eps_sweep_norm, eps_sweep_attacks, eps_sweep_n: accuracy vs eps on ``idx < eps_sweep_n``.
        attack_steps_sweep, steps_sweep_attacks: step counts for the convergence check.
        eot_sweep, eot_sweep_attacks: EOT settings for the convergence check.
        reversal_steps_sweep, reversal_sweep_attacks: accuracy vs reversal steps (``pgd``, ``bpda_eot``).
        steps_sweep_n: the steps, EOT and reversal sweeps run on ``idx < steps_sweep_n``.
    """

    eps_sweep: list[Union[float, str]] = field(
        default_factory=lambda: ["0/255", "2/255", "4/255", "8/255", "16/255", "32/255", "64/255"]
    )
    eps_sweep_norm: str = "Linf"
    eps_sweep_attacks: list[str] = field(default_factory=lambda: ["pgd", "bpda_eot"])
    eps_sweep_n: int = 200
    attack_steps_sweep: list[int] = field(default_factory=lambda: [5, 10, 20, 50])
    steps_sweep_attacks: list[str] = field(default_factory=lambda: ["pgd", "bpda_eot"])
    eot_sweep: list[int] = field(default_factory=lambda: [40])
    eot_sweep_attacks: list[str] = field(default_factory=lambda: ["bpda_eot"])
    reversal_steps_sweep: list[int] = field(default_factory=lambda: [0, 5, 10, 20, 40])
    reversal_sweep_attacks: list[str] = field(default_factory=lambda: ["pgd"])
    steps_sweep_n: int = 200

    def __post_init__(self) -> None:
        self.eps_sweep_norm = ThreatModel(self.eps_sweep_norm).value
        self.eps_sweep = sorted({parse_eps(e) for e in self.eps_sweep})
        for e in self.eps_sweep:
            check_eps(e, self.eps_sweep_norm)
        _at_least("sweeps", self, 1, "eps_sweep_n", "steps_sweep_n")
        for name, least in (("attack_steps_sweep", 1), ("eot_sweep", 1), ("reversal_steps_sweep", 0)):
            if any(s < least for s in getattr(self, name)):
                raise ValueError(f"sweeps.{name} needs values >= {least}, got {getattr(self, name)}")
            setattr(self, name, _unique(getattr(self, name), int, ordered=True))


@dataclass
class CheckSettings:
    """The sanity checks (:mod:`~lightning_modules.evaluation.checks`).

    Attributes:
        sanity_checks: run them.
        standard_model: the classifier is an undefended standard model, so PGD-20 at 8/255 must break
            it (None: the callback decides from the model's training mode).
        zero_tolerance: the accuracy that counts as ~0.
        noise_tolerance: the slack of paired comparisons (None: two binomial standard errors plus one example).
    """

    sanity_checks: bool = True
    standard_model: Optional[bool] = None
    zero_tolerance: float = 0.05
    noise_tolerance: Optional[float] = None


GROUPS: dict[str, type] = {
    "scoring": ScoringSettings,
    "attack": AttackSettings,
    "adaptive": AdaptiveSettings,
    "sweeps": SweepSettings,
    "checks": CheckSettings,
}

__all__ = ["ScoringSettings", "AttackSettings", "AdaptiveSettings", "SweepSettings", "CheckSettings", "GROUPS"]
