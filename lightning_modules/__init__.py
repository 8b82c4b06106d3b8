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
"""

from .advcl import AdvCLModule, LinearProbeModule
from .ascl import ASCLConfig, ASCLModule
from .attacks.core import ThreatModel, fgsm_rs, pgd, projected_gradient, trades_attack
from .base import BaseModule
from .losses import info_nce
from .module import ReversalModule
from .nn.backbones import BackboneName, Classifier, build_backbone
from .nn.heads import ContrastiveHead
from .nn.kap import KernelAveragePool, insert_kap
from .reversal import ReversalConfig, reverse
from .settings import AttackConfig, InferenceConfig, OptimConfig, SpeedConfig, SSLConfig
from .views.kornia import SimCLRViews

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
