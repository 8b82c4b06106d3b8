"""What the robustness evaluation runs: :class:`EvalConfig` (budgets read by ``util.parse_eps``).

Example:
    >>> from lightning_modules.evaluation.config import EvalConfig
    >>> cfg = EvalConfig(threat_models={"Linf": "8/255"}, attacks=["pgd", "apgd_ce_bpda"], draws=3)
    >>> cfg.threat_models, cfg.draws
    ({'Linf': 0.03137254901960784}, 3)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

from ..attacks.core import ThreatModel, check_eps
from ..util import parse_eps

# Settings of the earlier flat configuration and where they live now (named in error messages).
RENAMED = {
    "adaptive": "attacks (one list: adaptive and non-adaptive attacks alike)",
    "eot_samples": "eot",
    "defense_aware_lambda": "defense_aware_lambdas (a list, e.g. [0.1, 1, 10])",
    "full_gradient_smooth": "full_gradient_taus (a list, e.g. [0.1, 0.3, 1])",
}

FULL_ATTACKS = [
    "pgd",
    "cw",
    "apgd-ce",
    "autoattack",
    "defense_aware",
    "bpda_eot",
    "full_gradient",
    "apgd_ce_bpda",
    "apgd_dlrt_bpda",
    "apgd_ce_full",
    "apgd_dlrt_full",
    "square",
    "transfer",
]


@dataclass
class EvalConfig:
    """The rows of the evaluation. Budgets in ``[0, 1]`` pixel units (or strings like ``"8/255"``).

    Attributes:
        threat_models: norm -> eps of the main table (``Linf`` 8/255 and ``L2`` 0.5).
        attacks: rows of the main table, by name (:data:`~lightning_modules.evaluation.registry.ATTACKS`):
            on the classifier alone ``pgd``, ``cw``, ``apgd-ce``, ``autoattack``; on the whole defense
            ``defense_aware``, ``bpda_eot``, ``full_gradient`` (PGD), ``apgd_ce_bpda``,
            ``apgd_dlrt_bpda``, ``apgd_ce_full``, ``apgd_dlrt_full`` (pyautoattack APGD with EOT on
            the straight-through or the unrolled reversal), ``square`` (gradient-free, on the real
            randomized defense), ``transfer`` (from an independent surrogate model).
        draws: every "with reversal" result reverses the input this many times with independent
            randomness; an example counts as correct only if it is correct on every draw.
        composition: extra "with" columns for the rows at the main budgets: ``clean_mates`` (each
            attacked image reversed among clean batch-mates) and ``batch<N>`` (the reversal on
            batches of N images). The headline takes the worst.
        composition_attacks: the rows that get them: ``clean`` and names of ``attacks`` (default: all).
        mates_groups: ``clean_mates`` splits a batch into this many groups; each group's attacked
            images are reversed among the other groups' clean images (one reversal per group).
        steps, restarts, step_size: PGD / CW iterations, random restarts, step as a fraction of eps.
        apgd_steps: APGD iterations (on the classifier and on the defense).
        apgd_targets: target classes of the targeted APGD-DLR on the defense.
        eot: gradients averaged per step (EOT) in the attacks on the defense.
        adaptive_steps: iterations of the PGD attacks on the defense (default ``steps``).
        adaptive_n: attacks on the defense run on examples with ``idx < adaptive_n`` (default all).
        judge_draws: defended draws that judge the candidate iterates of an attack on the defense
            (each keeps its best iterate per example, not its last).
        defense_aware_lambdas: ``lambda`` of the defense-aware loss ``CE - lambda L_ssl``; one row each.
        full_gradient_taus: ``tau`` of the smooth sign in the unrolled reversal; one row each
            (for the PGD and the APGD full-gradient attacks).
        full_gradient_steps: reversal steps the full-gradient attacks unroll (default: all).
        full_gradient_checkpoint: recompute each unrolled step on the backward pass (saves memory).
        full_gradient_batch: the PGD full-gradient attack runs in chunks of this many images.
        square_queries, square_n: Square's query budget and its examples (``idx < square_n``).
        transfer_steps: PGD steps on the surrogate (default ``2 * steps``).
        eps_sweep, eps_sweep_norm, eps_sweep_attacks, eps_sweep_n: accuracy vs eps on ``idx < eps_sweep_n``.
        attack_steps_sweep, steps_sweep_attacks: step counts for the convergence check (first threat model).
        eot_sweep, eot_sweep_attacks: EOT settings for the convergence check.
        reversal_steps_sweep, reversal_sweep_attacks: accuracy vs reversal steps (``pgd``, ``bpda_eot``).
        steps_sweep_n: the steps, EOT and reversal sweeps run on ``idx < steps_sweep_n``.
        sanity_checks, standard_model, zero_tolerance, noise_tolerance: the sanity checks
            (:mod:`~lightning_modules.evaluation.checks`); ``standard_model``: the classifier is an
            undefended standard model, so PGD-20 at 8/255 must break it (None: the callback decides
            from the model's training mode).
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
        progress: print one line per row with the time left.
    """

    threat_models: dict[str, Union[float, str]] = field(default_factory=lambda: {"Linf": "8/255", "L2": 0.5})
    attacks: list[str] = field(default_factory=lambda: list(FULL_ATTACKS))
    draws: int = 5
    composition: list[str] = field(default_factory=lambda: ["clean_mates", "batch2", "batch16"])
    composition_attacks: Optional[list[str]] = None
    mates_groups: int = 8
    reversal_per_threat: bool = True
    steps: int = 20
    restarts: int = 1
    step_size: float = 0.25
    apgd_steps: int = 100
    apgd_targets: int = 3
    eot: int = 20
    adaptive_steps: Optional[int] = None
    adaptive_n: Optional[int] = None
    judge_draws: int = 2
    defense_aware_lambdas: list[float] = field(default_factory=lambda: [0.1, 1.0, 10.0])
    full_gradient_taus: list[float] = field(default_factory=lambda: [0.1, 0.3, 1.0])
    full_gradient_steps: Optional[int] = None
    full_gradient_checkpoint: bool = True
    full_gradient_batch: Optional[int] = None
    square_queries: int = 1000
    square_n: int = 100
    transfer_steps: Optional[int] = None
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
    sanity_checks: bool = True
    standard_model: Optional[bool] = None
    zero_tolerance: float = 0.05
    noise_tolerance: Optional[float] = None
    cascade: bool = False
    draws_in_one_call: bool = True
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        from .registry import ATTACKS, EOT_ATTACKS, SWEEPABLE

        self.threat_models = {ThreatModel(k).value: parse_eps(v) for k, v in dict(self.threat_models).items()}
        for norm, eps in self.threat_models.items():
            check_eps(eps, norm)
        self.eps_sweep_norm = ThreatModel(self.eps_sweep_norm).value
        self.eps_sweep = sorted({parse_eps(e) for e in self.eps_sweep})
        for e in self.eps_sweep:
            check_eps(e, self.eps_sweep_norm)
        self.attacks = list(dict.fromkeys(self.attacks))
        _check_names("attacks", self.attacks, ATTACKS)
        if self.composition_attacks is not None:
            _check_names("composition_attacks", self.composition_attacks, ["clean", *self.attacks])
        for what in ("eps_sweep_attacks", "steps_sweep_attacks"):
            _check_names(what, getattr(self, what), SWEEPABLE)
        _check_names("eot_sweep_attacks", self.eot_sweep_attacks, EOT_ATTACKS)
        _check_names("reversal_sweep_attacks", self.reversal_sweep_attacks, ("pgd", "bpda_eot"))
        for c in self.composition:
            if c != "clean_mates" and not (c.startswith("batch") and c[5:].isdigit() and int(c[5:]) >= 2):
                raise ValueError(
                    f"unknown composition '{c}'; use clean_mates or batch<N> with N >= 2 (batch2, batch16)"
                )
        for name in (
            "draws",
            "steps",
            "restarts",
            "apgd_steps",
            "apgd_targets",
            "eot",
            "judge_draws",
            "mates_groups",
            "square_queries",
            "square_n",
            "eps_sweep_n",
            "steps_sweep_n",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("adaptive_steps", "adaptive_n", "full_gradient_steps", "full_gradient_batch", "transfer_steps"):
            v = getattr(self, name)
            if v is not None and v < (2 if name == "full_gradient_batch" else 1):
                raise ValueError(f"{name} must be >= {2 if name == 'full_gradient_batch' else 1} or null, got {v}")
        if not 0 < self.step_size <= 1:
            raise ValueError(f"step_size is a fraction of eps in (0, 1], got {self.step_size}")
        if not self.defense_aware_lambdas or not self.full_gradient_taus:
            raise ValueError("defense_aware_lambdas and full_gradient_taus need at least one value each")
        if any(t < 0 for t in self.full_gradient_taus):
            raise ValueError(f"full_gradient_taus must be >= 0, got {self.full_gradient_taus}")
        if any(s < 1 for s in self.attack_steps_sweep + self.eot_sweep) or any(
            s < 0 for s in self.reversal_steps_sweep
        ):
            raise ValueError("attack_steps_sweep and eot_sweep need values >= 1, reversal_steps_sweep values >= 0")
        self.attack_steps_sweep = sorted(set(int(s) for s in self.attack_steps_sweep))
        self.eot_sweep = sorted(set(int(s) for s in self.eot_sweep))
        self.reversal_steps_sweep = sorted(set(int(s) for s in self.reversal_steps_sweep))
        self.defense_aware_lambdas = [float(v) for v in dict.fromkeys(self.defense_aware_lambdas)]
        self.full_gradient_taus = [float(v) for v in dict.fromkeys(self.full_gradient_taus)]

    @property
    def n_adaptive_steps(self) -> int:
        return self.adaptive_steps or self.steps

    @property
    def n_transfer_steps(self) -> int:
        return self.transfer_steps or 2 * self.steps

    @property
    def main(self) -> tuple[str, float]:
        """The first threat model: the one of the steps / EOT / reversal sweeps."""
        return next(iter(self.threat_models.items()), ("Linf", 8 / 255))

    def with_composition(self, attack: str) -> bool:
        return self.composition_attacks is None or attack in self.composition_attacks


def _check_names(what: str, names: Sequence[str], allowed: Sequence[str]) -> None:
    bad = [n for n in names if n not in allowed]
    if bad:
        import difflib

        hints = {b: difflib.get_close_matches(b, list(allowed), n=1) for b in bad}
        near = "; ".join(f"'{b}': did you mean '{h[0]}'?" for b, h in hints.items() if h)
        raise ValueError(f"unknown {what} {bad}; choose from {list(allowed)}" + (f" ({near})" if near else ""))


def legacy_hint(message: str) -> Optional[str]:
    """For a parser error that names a setting of the earlier evaluation layout, where it lives now."""
    from dataclasses import fields

    from ..settings import rejected_keys

    names = {f.name for f in fields(EvalConfig)}
    for key in rejected_keys(message):
        if key in RENAMED:
            return f"'{key}' is now config.{RENAMED[key]}"
        if key in names:
            return (
                f"the evaluation's settings moved under 'config': write `init_args: {{config: {{{key}: ...}}}}` "
                f"for callbacks.RobustEvaluation (or --trainer.callbacks.init_args.config.{key} ...)"
            )
    return None


__all__ = ["EvalConfig", "legacy_hint", "FULL_ATTACKS", "RENAMED"]
