"""Models and the maths around them. Where things live:

- :mod:`~lightning_modules.reversal` — the reversal (Mao et al. 2021): the core of the package.
- :mod:`~lightning_modules.base` — :class:`BaseModule`: classifier, head, attacks, reversal, evaluation
  steps, optimizer; each method below is a small subclass that adds its training loss.
- :mod:`~lightning_modules.settings` — the settings groups (``attack``, ``ssl``, ``optim``, ``inference``, ``speed``).
- :mod:`~lightning_modules.module` — :class:`ReversalModule`, joint classifier + contrastive head.
- :mod:`~lightning_modules.advcl` — adversarial contrastive pretraining (ACL/AdvCL) and linear probing.
- :mod:`~lightning_modules.ascl` — adversarial supervised contrastive learning (loss: :mod:`~lightning_modules.supcon`).
- :mod:`~lightning_modules.losses` — InfoNCE, TRADES KL, CW margin, DLR (pure functions).
- :mod:`lightning_modules.attacks` — batched PGD / FGSM-RS / TRADES (:mod:`~lightning_modules.attacks.core`),
  AutoAttack, attacks on the whole defense and adaptive attacks on the reversal.
- :mod:`lightning_modules.nn` — networks: backbones, the contrastive head, kernel average pooling (Bashivan
  et al.), RobustBench zoo models from local files.
- :mod:`lightning_modules.views` — SimCLR views: kornia (differentiable, per image) or fast (batched).
- :mod:`lightning_modules.evaluation` — the robustness evaluation of a trained model, and randomized
  smoothing (Cohen et al.): CERTIFY / PREDICT, batched (:mod:`~lightning_modules.evaluation.smoothing`).

Importing is lazy (PEP 562): ``import lightning_modules`` loads none of these, and each name below is
imported from the module that defines it on first use. So ``class_path: lightning_modules.ReversalModule``
works as ever (jsonargparse imports the package and reads the attribute), while a building block such as
``lightning_modules.losses``, ``lightning_modules.attacks``, ``lightning_modules.nn`` or
``lightning_modules.views`` loads torch (and kornia for the views) but not Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

# Each public name and the module (relative to this package) that defines it.
_EXPORTS = {
    "ThreatModel": "attacks.core",
    "fgsm_rs": "attacks.core",
    "pgd": "attacks.core",
    "projected_gradient": "attacks.core",
    "trades_attack": "attacks.core",
    "SimCLRViews": "views.kornia",
    "BackboneName": "nn.backbones",
    "Classifier": "nn.backbones",
    "build_backbone": "nn.backbones",
    "ContrastiveHead": "nn.heads",
    "KernelAveragePool": "nn.kap",
    "insert_kap": "nn.kap",
    "info_nce": "losses",
    "BaseModule": "base",
    "ReversalModule": "module",
    "AttackConfig": "settings",
    "SSLConfig": "settings",
    "OptimConfig": "settings",
    "InferenceConfig": "settings",
    "SpeedConfig": "settings",
    "ReversalConfig": "reversal",
    "reverse": "reversal",
    "AdvCLModule": "advcl",
    "LinearProbeModule": "advcl",
    "ASCLConfig": "ascl",
    "ASCLModule": "ascl",
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
