import sys

import pytest
import torch

from lightning_modules.methods.module import ReversalModule
from lightning_modules.nn.robustbench_models import import_robustbench, load_robustbench


def test_robustbench_imports_with_pyautoattack_and_new_setuptools():
    rb = import_robustbench()
    from robustbench.eval import benchmark  # noqa: F401
    from robustbench.utils import load_model  # noqa: F401  (imports autoattack and pkg_resources)

    assert rb.__name__ == "robustbench" and "autoattack" in sys.modules


def test_zoo_model_loads_from_local_dir_only(tmp_path):
    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    net = model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf]["Standard"]["model"]()
    folder = tmp_path / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    torch.save(net.state_dict(), folder / "Standard.pt")
    loaded = load_robustbench("Standard", "cifar10", "Linf", model_dir=str(tmp_path))
    for (k, a), b in zip(net.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    m = ReversalModule(robustbench_model="Standard", model_dir=str(tmp_path), inference=dict(val_attack_steps=0))
    assert m.freeze_backbone and not any(p.requires_grad for p in m.classifier.parameters())
    assert m.classifier.feature_dim == 640
    with pytest.raises(FileNotFoundError, match="Carmon2019Unlabeled.pt"):
        load_robustbench("Carmon2019Unlabeled", model_dir=str(tmp_path))
    with pytest.raises(ValueError, match="unknown RobustBench model 'Standart'.*Standard"):
        load_robustbench("Standart", model_dir=str(tmp_path))
