"""Models and the maths around them. Where things live:

- :mod:`~lightning_modules.reversal` — the reversal (Mao et al. 2021): the core of the package.
- :mod:`~lightning_modules.base` — :class:`BaseModule`: classifier, head, attacks, reversal, evaluation
  steps, optimizer; each method below is a small subclass that adds its training loss.
- :mod:`~lightning_modules.settings` — the settings groups (``attack``, ``ssl``, ``optim``, ``inference``, ``speed``).
- :mod:`~lightning_modules.module` — :class:`ReversalModule`, joint classifier + contrastive head.
- :mod:`~lightning_modules.attacks` — batched PGD / FGSM-RS / TRADES attacks.
- :mod:`~lightning_modules.losses` — InfoNCE, TRADES KL, CW margin, DLR (pure functions).
- :mod:`~lightning_modules.augment` — SimCLR views (kornia, differentiable, per image).
- :mod:`~lightning_modules.backbones`, :mod:`~lightning_modules.heads` — networks.
- :mod:`~lightning_modules.kap` — kernel average pooling layers (Bashivan et al.).
- :mod:`~lightning_modules.advcl` — adversarial contrastive pretraining (ACL/AdvCL) and linear probing.
- :mod:`~lightning_modules.ascl` — adversarial supervised contrastive learning (loss: :mod:`~lightning_modules.supcon`).
- :mod:`~lightning_modules.smoothing` — randomized smoothing (Cohen et al.): CERTIFY / PREDICT, batched.
- :mod:`~lightning_modules.robustbench_models` — RobustBench zoo models from local files.
"""

from .advcl import AdvCLModule, LinearProbeModule
from .ascl import ASCLConfig, ASCLModule
from .attacks import ThreatModel, fgsm_rs, pgd, projected_gradient, trades_attack
from .augment import SimCLRViews
from .backbones import BackboneName, Classifier, build_backbone
from .base import BaseModule
from .heads import ContrastiveHead
from .kap import KernelAveragePool, insert_kap
from .losses import info_nce
from .module import ReversalModule
from .reversal import ReversalConfig, reverse
from .settings import AttackConfig, InferenceConfig, OptimConfig, SpeedConfig, SSLConfig

__all__ = [
    "ThreatModel",
    "fgsm_rs",
    "pgd",
    "projected_gradient",
    "trades_attack",
    "SimCLRViews",
    "BackboneName",
    "Classifier",
    "build_backbone",
    "ContrastiveHead",
    "info_nce",
    "BaseModule",
    "ReversalModule",
    "AttackConfig",
    "SSLConfig",
    "OptimConfig",
    "InferenceConfig",
    "SpeedConfig",
    "ReversalConfig",
    "reverse",
    "KernelAveragePool",
    "insert_kap",
    "AdvCLModule",
    "LinearProbeModule",
    "ASCLConfig",
    "ASCLModule",
]
