"""What the robustness evaluation runs: :class:`EvalConfig` (budgets read by ``util.parse_eps``).

Example:
    >>> from lightning_modules.evaluation.config import EvalConfig
    >>> cfg = EvalConfig(threat_models={"Linf": "8/255"}, attacks=["pgd", "apgd_ce_bpda"], scoring={"draws": 3})
    >>> cfg.threat_models, cfg.scoring.draws, cfg.replace("attack.eot", 40).attack.eot
    ({'Linf': 0.03137254901960784}, 3, 40)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from ..attacks.core import ThreatModel, check_eps
from ..util import parse_eps
from .eval_settings import GROUPS, AdaptiveSettings, AttackSettings, CheckSettings, ScoringSettings, SweepSettings


@dataclass
class EvalConfig:
    """The rows of the evaluation: the main table is every attack at every threat model; the groups
    (:mod:`~lightning_modules.evaluation.eval_settings`) say how rows are scored, how hard the attacks
    try, the attacks on the defense, the sweeps and the sanity checks. A group is written as a mapping
    (``scoring: {draws: 5}``) or built in Python (``scoring=ScoringSettings(draws=5)`` or a dict).

    Attributes:
        threat_models: norm -> eps of the main table (``Linf`` 8/255 and ``L2`` 0.5); the first is
            :attr:`main`, the threat model of the steps / EOT / reversal sweeps.
        attacks: rows of the main table, by name (:data:`~lightning_modules.evaluation.registry.ATTACKS`):
            on the classifier alone ``pgd``, ``cw``, ``apgd-ce``, ``autoattack``; on the whole defense
            ``defense_aware``, ``bpda_eot``, ``full_gradient`` (PGD), ``apgd_ce_bpda``,
            ``apgd_dlrt_bpda``, ``apgd_ce_full``, ``apgd_dlrt_full`` (pyautoattack APGD with EOT on
            the straight-through or the unrolled reversal), ``square`` (gradient-free, on the real
            randomized defense), ``transfer`` (from an independent surrogate model). None: every attack
            of the registry but Mao et al.'s ``apgd_fab``. The registry checks the names
            (:func:`~lightning_modules.evaluation.registry.validate`).
        scoring, attack, adaptive, sweeps, checks: the groups.
        progress: print one line per row with the time left.
    """

    threat_models: dict[str, Union[float, str]] = field(default_factory=lambda: {"Linf": "8/255", "L2": 0.5})
    attacks: Optional[list[str]] = None
    scoring: ScoringSettings = field(default_factory=ScoringSettings)
    attack: AttackSettings = field(default_factory=AttackSettings)
    adaptive: AdaptiveSettings = field(default_factory=AdaptiveSettings)
    sweeps: SweepSettings = field(default_factory=SweepSettings)
    checks: CheckSettings = field(default_factory=CheckSettings)
    progress: bool = True

    def __post_init__(self) -> None:
        for name, kind in GROUPS.items():
            if isinstance(getattr(self, name), dict):
                setattr(self, name, kind(**getattr(self, name)))
        self.threat_models = {ThreatModel(k).value: parse_eps(v) for k, v in dict(self.threat_models).items()}
        for norm, eps in self.threat_models.items():
            check_eps(eps, norm)
        self.attacks = None if self.attacks is None else list(dict.fromkeys(self.attacks))

    @property
    def n_adaptive_steps(self) -> int:
        return self.adaptive.adaptive_steps or self.attack.steps

    @property
    def n_transfer_steps(self) -> int:
        return self.adaptive.transfer_steps or 2 * self.attack.steps

    @property
    def main(self) -> tuple[str, float]:
        """The first threat model: the one of the steps / EOT / reversal sweeps."""
        return next(iter(self.threat_models.items()), ("Linf", 8 / 255))

    def with_composition(self, attack: str) -> bool:
        return self.scoring.composition_attacks is None or attack in self.scoring.composition_attacks

    def get(self, path: str) -> Any:
        """A setting by its dotted name: ``cfg.get("attack.eot")``."""
        group, _, name = path.rpartition(".")
        return getattr(getattr(self, group) if group else self, name)

    def replace(self, path: str, value: Any) -> "EvalConfig":
        """A copy with one setting changed, by its dotted name: ``cfg.replace("attack.eot", 40)``."""
        group, _, name = path.rpartition(".")
        if not group:
            return dataclasses.replace(self, **{name: value})
        return dataclasses.replace(self, **{group: dataclasses.replace(getattr(self, group), **{name: value})})


__all__ = ["EvalConfig"]
