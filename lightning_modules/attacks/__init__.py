"""Attacks in pixel space (inputs in ``[0, 1]``) on a classifier:

- :mod:`.core` — :func:`projected_gradient` and the attacks built on it (:func:`pgd`, :func:`fgsm_rs`,
  :func:`trades_attack`), :class:`ThreatModel`, :func:`check_eps`, :func:`frozen_params`, :func:`logits_of`;
- :mod:`.autoattack` — standard AutoAttack and APGD from pyautoattack (imported when called).

The attacks on the whole defense (stand-ins, EOT, best iterate) belong to the evaluation
(:mod:`lightning_modules.evaluation.adaptive`), built on the defense (:mod:`lightning_modules.defense`),
which is built on :mod:`.core`. The function :func:`.autoattack.autoattack` is not re-exported either, so that
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

__all__ = ["ThreatModel", "check_eps", "check_batch", "projected_gradient", "pgd", "fgsm_rs", "trades_attack"]
__all__ += ["logits_of", "frozen_params", "STANDARD_ATTACKS", "AutoAttackSpeed", "plain_autoattack", "apgd"]
