"""Attacks in pixel space (inputs in ``[0, 1]``), from the batched core to the attacks on the whole defense:

- :mod:`.core` — :func:`projected_gradient` and the attacks built on it (:func:`pgd`, :func:`fgsm_rs`,
  :func:`trades_attack`), :class:`ThreatModel`, :func:`check_eps`, :func:`frozen_params`, :func:`logits_of`;
- :mod:`.autoattack` — standard AutoAttack and APGD from pyautoattack (imported when called);
- :mod:`.defense_attacks` — APGD with EOT on differentiable stand-ins and Square on the real randomized
  defense, with the best-iterate bookkeeping they share;
- :mod:`.adaptive` — adaptive attacks on the reversal (defense-aware, BPDA + EOT, full gradient, transfer).

:mod:`.adaptive` is built on :mod:`lightning_modules.reversal`, which itself runs :mod:`.core`, so it is not
imported here: ``from lightning_modules.attacks import adaptive`` or ``lightning_modules.attacks.adaptive``.
The function :func:`.autoattack.autoattack` is not re-exported either, so that
``lightning_modules.attacks.autoattack`` stays the module. Everything here needs torch only (no Lightning).
"""

from .autoattack import STANDARD_ATTACKS, AutoAttackSpeed, apgd, plain_autoattack
from .core import (
    ThreatModel,
    check_batch,
    check_eps,
    fgsm_rs,
    frozen_params,
    logits_of,
    pgd,
    projected_gradient,
    trades_attack,
)
from .defense_attacks import BestIterate, StandIn, apgd_eot, chunks, margin, pick_best, square

__all__ = [
    "ThreatModel",
    "check_eps",
    "check_batch",
    "projected_gradient",
    "pgd",
    "fgsm_rs",
    "trades_attack",
    "logits_of",
    "frozen_params",
    "STANDARD_ATTACKS",
    "AutoAttackSpeed",
    "plain_autoattack",
    "apgd",
    "chunks",
    "margin",
    "BestIterate",
    "pick_best",
    "StandIn",
    "apgd_eot",
    "square",
]
