"""The networks (plain ``torch.nn``, no Lightning): backbones and :class:`Classifier` (``x -> (logits,
features)``), the contrastive head, kernel average pooling (Bashivan et al.), RobustBench zoo models."""

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

__all__ = ["BackboneName", "Classifier", "Normalize", "PreActResNet18", "WideResNet", "SmallCNN", "build_backbone"]
__all__ += ["load_state_dict", "ContrastiveHead", "KernelAveragePool", "insert_kap", "apply_kap_config", "PADDINGS"]
__all__ += ["BenchmarkDataset", "import_robustbench", "load_robustbench"]
