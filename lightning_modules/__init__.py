"""Models and the maths around them. Where things live:

- :mod:`lightning_modules.defense` — the reversal (Mao et al. 2021), the core of the package, and the
  defended model (:class:`~lightning_modules.defense.model.DefendedModel`).
- :mod:`lightning_modules.methods` — :class:`BaseModule` (classifier, head, attacks, reversal, evaluation
  steps, optimizer) and the methods, each a small subclass adding its training loss: :class:`ReversalModule`
  (joint classifier + contrastive head), AdvCL pretraining and linear probing, ASCL.
- :mod:`~lightning_modules.settings` — the settings groups (``attack``, ``ssl``, ``optim``, ``inference``,
  ``speed``, ``reversal``), built one way (:func:`~lightning_modules.settings.build_group`).
- :mod:`~lightning_modules.util` — small helpers: console lines, budgets, atomic writes, pixels, time left.
- :mod:`~lightning_modules.losses` — InfoNCE, TRADES KL, CW margin, DLR (pure functions).
- :mod:`lightning_modules.attacks` — batched PGD / FGSM-RS / TRADES (:mod:`~lightning_modules.attacks.core`),
  and AutoAttack (the attacks on the defense are the evaluation's).
- :mod:`lightning_modules.nn` — networks: backbones, the contrastive head, kernel average pooling (Bashivan
  et al.), RobustBench zoo models from local files.
- :mod:`lightning_modules.views` — SimCLR views: kornia (differentiable, per image) or fast (batched).
- :mod:`lightning_modules.evaluation` — the robustness evaluation of a trained model, and randomized
  smoothing (Cohen et al.): CERTIFY / PREDICT, batched (:mod:`~lightning_modules.evaluation.smoothing`).

Importing is lazy (PEP 562): each name below is imported from its module on first use, so
``class_path: lightning_modules.ReversalModule`` works while a building block (``losses``, ``attacks``,
``nn``, ``views``) loads torch (and kornia for the views) but not Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

# Each public name and the module (relative to this package) that defines it.
_EXPORTS = {
    name: module
    for module, names in {
        "attacks.core": "ThreatModel fgsm_rs pgd projected_gradient trades_attack",
        "views.kornia": "SimCLRViews",
        "nn.backbones": "BackboneName Classifier build_backbone",
        "nn.heads": "ContrastiveHead",
        "nn.kap": "KernelAveragePool insert_kap",
        "losses": "info_nce",
        "methods.base": "BaseModule",
        "methods.module": "ReversalModule",
        "settings": "AttackConfig SSLConfig OptimConfig InferenceConfig SpeedConfig ReversalConfig",
        "defense.reversal": "reverse",
        "defense.model": "DefendedModel",
        "methods.advcl": "AdvCLModule LinearProbeModule",
        "methods.ascl": "ASCLConfig ASCLModule",
    }.items()
    for name in names.split()
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups find it without coming here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
