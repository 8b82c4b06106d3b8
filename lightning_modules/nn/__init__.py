"""The networks: backbones, the contrastive head, kernel average pooling, RobustBench zoo models.

- :mod:`.backbones` — :func:`build_backbone` (PreActResNet-18, WideResNets, ResNet-50, a small CNN)
  and :class:`Classifier`, the ``x -> (logits, features)`` wrapper every method uses;
- :mod:`.heads` — :class:`ContrastiveHead`, the projection head of the contrastive loss;
- :mod:`.kap` — kernel average pooling layers (Bashivan et al.) and their insertion into a backbone;
- :mod:`.robustbench_models` — RobustBench zoo models from local files (robustbench imported when used).

Plain ``torch.nn`` modules: nothing here imports Lightning.
"""

from .backbones import (
    BackboneName,
    Classifier,
    Normalize,
    PreActResNet18,
    SmallCNN,
    WideResNet,
    build_backbone,
    load_state_dict,
)
from .heads import ContrastiveHead
from .kap import PADDINGS, KernelAveragePool, apply_kap_config, insert_kap
from .robustbench_models import BenchmarkDataset, import_robustbench, load_robustbench

__all__ = [
    "BackboneName",
    "Classifier",
    "Normalize",
    "PreActResNet18",
    "WideResNet",
    "SmallCNN",
    "build_backbone",
    "load_state_dict",
    "ContrastiveHead",
    "KernelAveragePool",
    "insert_kap",
    "apply_kap_config",
    "PADDINGS",
    "BenchmarkDataset",
    "import_robustbench",
    "load_robustbench",
]
