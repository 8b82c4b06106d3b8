"""RobustBench zoo models as frozen backbones, loaded from a local ``model_dir`` only.

robustbench 1.1.1 needs ``pkg_resources`` (gone from setuptools >= 81) and imports ``autoattack`` (PyPI's
package is ``pyautoattack``): :func:`import_robustbench` bridges both. The zoo architecture comes from
robustbench's registry, the weights are loaded here with ``weights_only=True``: nothing is downloaded at run
time and no pickle can run code.

Example:
    >>> from lightning_modules.nn.robustbench_models import load_robustbench
    >>> net = load_robustbench("Standard", "cifar10", "Linf", model_dir="models")  # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import importlib
import sys
import types
from enum import Enum
from pathlib import Path

import torch.nn as nn

from .backbones import load_state_dict


class BenchmarkDataset(str, Enum):
    cifar10 = "cifar10"
    cifar100 = "cifar100"
    imagenet = "imagenet"


def _install_pkg_resources_shim() -> None:
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        from importlib import resources

        shim = types.ModuleType("pkg_resources")
        # the only function robustbench uses
        shim.resource_filename = lambda package, path: str(resources.files(package).joinpath(path))
        sys.modules["pkg_resources"] = shim


def import_robustbench():
    """Import robustbench with the two compatibility bridges in place; returns the module."""
    _install_pkg_resources_shim()
    if "autoattack" not in sys.modules:
        try:
            importlib.import_module("autoattack")
        except ImportError:
            sys.modules["autoattack"] = importlib.import_module("pyautoattack")
            for sub in ("state", "autopgd_base", "fab_pt", "square", "checks", "other_utils"):
                sys.modules[f"autoattack.{sub}"] = importlib.import_module(f"pyautoattack.{sub}")
    return importlib.import_module("robustbench")


def load_robustbench(
    name: str, dataset: str = "cifar10", threat_model: str = "Linf", model_dir: str = "models", trust: bool = False
) -> nn.Module:
    """Build zoo model ``name`` and load ``model_dir/<dataset>/<threat_model>/<name>.pt`` (eval mode).

    Raises ``ValueError`` for an unknown name (with close matches) and ``FileNotFoundError`` naming
    the expected file when the weights are not there (nothing is downloaded).
    """
    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset as RBDataset
    from robustbench.model_zoo.enums import ThreatModel as RBThreat
    from robustbench.utils import rm_substr_from_state_dict

    ds = {"cifar10": RBDataset.cifar_10, "cifar100": RBDataset.cifar_100, "imagenet": RBDataset.imagenet}
    if dataset not in ds:
        raise ValueError(f"unknown RobustBench dataset '{dataset}'; choose one of {sorted(ds)}")
    try:
        tm = RBThreat(threat_model)
    except ValueError:
        raise ValueError(
            f"unknown threat model '{threat_model}'; choose one of {[t.value for t in RBThreat]}"
        ) from None
    zoo = model_dicts[ds[dataset]][tm]
    if name not in zoo:
        close = difflib.get_close_matches(name, list(zoo), n=5)
        raise ValueError(
            f"unknown RobustBench model '{name}' for {dataset}/{threat_model}; did you mean {close}? "
            f"({len(zoo)} models listed by robustbench.utils.list_available_models)"
        )
    path = Path(model_dir) / ds[dataset].value / tm.value / f"{name}.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"RobustBench weights for '{name}' not found at {path}. This machine cannot download them: on a "
            f'machine with internet run `python -c "from robustbench.utils import load_model; '
            f"load_model('{name}', model_dir='{model_dir}', dataset='{ds[dataset].value}', "
            f"threat_model='{tm.value}')\"` "
            f"and copy {path} here."
        )
    sd = load_state_dict(path, trust=trust)  # before building: a bad file fails fast
    net = zoo[name]["model"]()
    sd = rm_substr_from_state_dict(rm_substr_from_state_dict(sd, "module."), "model.")
    missing, unexpected = net.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise RuntimeError(
            f"{path} does not match RobustBench model '{name}': missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return net.eval()
