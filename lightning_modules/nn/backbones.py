"""Backbones: classifiers that take images in ``[0, 1]`` and return ``(logits, features)``.

Normalization happens inside (RobustBench convention), so attacks and the reversal work in
pixel space. ``features`` are the penultimate activations the contrastive head reads.

Example:
    >>> import torch
    >>> from lightning_modules.nn.backbones import build_backbone
    >>> net = build_backbone("preact_resnet18", num_classes=10)
    >>> logits, feats = net(torch.rand(2, 3, 32, 32))
    >>> logits.shape, feats.shape
    (torch.Size([2, 10]), torch.Size([2, 512]))
"""

from __future__ import annotations

import difflib
from enum import Enum
from functools import partial
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

#: per-channel ``(mean, std)`` of the inputs, by ``normalization``
STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, as a layer (so gradients w.r.t. pixels are exact)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class _Net(nn.Module):
    """``forward`` = the final ``linear`` on ``features``: the layout :class:`Classifier` reads directly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))


# PreActResNet-18 (He et al. 2016, as used by Rice et al. / Wong et al. for CIFAR AT)
class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        sc = self.shortcut(o) if self.shortcut is not None else x
        return self.conv2(F.relu(self.bn2(self.conv1(o)))) + sc


class PreActResNet18(_Net):
    def __init__(self, num_classes: int = 10, width: int = 64) -> None:
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(3, w, 3, 1, 1, bias=False)
        self.layer1 = nn.Sequential(PreActBlock(w, w, 1), PreActBlock(w, w, 1))
        self.layer2 = nn.Sequential(PreActBlock(w, 2 * w, 2), PreActBlock(2 * w, 2 * w, 1))
        self.layer3 = nn.Sequential(PreActBlock(2 * w, 4 * w, 2), PreActBlock(4 * w, 4 * w, 1))
        self.layer4 = nn.Sequential(PreActBlock(4 * w, 8 * w, 2), PreActBlock(8 * w, 8 * w, 1))
        self.bn = nn.BatchNorm2d(8 * w)
        self.linear = nn.Linear(8 * w, num_classes)
        self.feature_dim = 8 * w

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        return F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1).flatten(1)


# WideResNet (Zagoruyko & Komodakis 2016), the RobustBench CIFAR layout
class WideBlock(PreActBlock):
    """WideResNet's block: the same pre-activation block (same state-dict keys)."""


class WideResNet(_Net):
    def __init__(self, depth: int = 28, widen: int = 10, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        ch = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, ch[0], 3, 1, 1, bias=False)

        def group(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(*[WideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n)])

        self.layer1, self.layer2, self.layer3 = group(ch[0], ch[1], 1), group(ch[1], ch[2], 2), group(ch[2], ch[3], 2)
        self.bn = nn.BatchNorm2d(ch[3])
        self.linear = nn.Linear(ch[3], num_classes)
        self.feature_dim = ch[3]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1).flatten(1)


class SmallCNN(_Net):
    """A few-layer CNN for tests, the CPU profile, CPU benchmarks and the scaling study (not a research
    backbone): ``stages`` stages of ``depth`` conv-BN-ReLU layers (``width``, ``2 width``, ... channels),
    max-pooling between stages. ``stages=3, depth=1`` is the original 3-conv network (same state-dict
    keys); ``stages=4`` adds an ``8 width`` stage at 4x4 (the CPU profile's network)."""

    def __init__(self, num_classes: int = 10, width: int = 32, depth: int = 1, stages: int = 3) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"small_cnn depth must be >= 1, got {depth}")
        if not 1 <= stages <= 5:
            raise ValueError(f"small_cnn stages must be in 1..5 (32x32 inputs), got {stages}")
        w, layers, cin = width, [], 3
        for i in range(stages):
            c = w * 2**i
            for _ in range(depth):
                layers += [nn.Conv2d(cin, c, 3, 1, 1), nn.BatchNorm2d(c), nn.ReLU()]
                cin = c
            layers += [nn.MaxPool2d(2)] if i < stages - 1 else [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.linear = nn.Linear(cin, num_classes)
        self.feature_dim = cin

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Classifier(nn.Module):
    """Wraps a network into ``x in [0,1] -> (logits, features)`` with normalization inside. ``net`` either
    has ``features(x)`` and a final ``linear`` (the backbones here), or is any classifier: then the features
    are the input of its last ``nn.Linear``, read by a hook (how RobustBench zoo models become backbones)."""

    def __init__(self, net: nn.Module, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        super().__init__()
        self.net = net
        self.normalize = Normalize(mean, std) if mean is not None else nn.Identity()
        self._direct = hasattr(net, "features") and isinstance(getattr(net, "linear", None), nn.Linear)
        if self._direct:
            self.feature_dim, self.num_classes = net.linear.in_features, net.linear.out_features
        else:
            last = [m for m in net.modules() if isinstance(m, nn.Linear)]
            if not last:
                raise ValueError(f"{type(net).__name__} has no nn.Linear layer to read features from")
            self._last = last[-1]
            self.feature_dim, self.num_classes = self._last.in_features, self._last.out_features
            self._captured: Optional[list[torch.Tensor]] = None  # a list only while our forward runs
            self._last.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if self._captured is not None:
            self._captured.append(inputs[0])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.normalize(x)
        if self._direct:
            f = self.net.features(x)
            return self.net.linear(f), f
        self._captured = []
        try:
            logits = self.net(x)
            feats = self._captured[-1].flatten(1)
        finally:
            self._captured = None
        return logits, feats


class BackboneName(str, Enum):
    preact_resnet18 = "preact_resnet18"
    wrn28_10 = "wrn28_10"
    wrn34_10 = "wrn34_10"
    resnet50 = "resnet50"
    small_cnn = "small_cnn"
    wide_resnet = "wide_resnet"  # any depth (6n+4) and widen factor: backbone_kwargs {depth, widen}


def build_backbone(
    name: str, num_classes: int = 10, normalization: str | None = "cifar10", weights_path: str | None = None, **kwargs
) -> Classifier:
    """A :class:`Classifier` by name (:class:`BackboneName`). ``weights_path``: a local torchvision-style
    state dict (ResNet-50 ImageNet weights, say), loaded with ``weights_only=True``. ``kwargs`` go to the
    network (``width``/``depth``/``stages`` for small_cnn, ``depth``/``widen`` for wide_resnet), except
    ``kap={window, after, padding}``: KAP layers after the named submodules, inserted after loading."""
    kap = kwargs.pop("kap", None)
    try:
        key = BackboneName(name)
    except ValueError:
        names = [b.value for b in BackboneName]
        close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.4)
        raise ValueError(
            f"unknown backbone '{name}'; choose one of {names}{f' (did you mean {close}?)' if close else ''} "
            "or load a RobustBench / checkpoint model with lightning_modules.nn.robustbench_models"
        ) from None
    nets = dict(preact_resnet18=PreActResNet18, small_cnn=SmallCNN, wide_resnet=WideResNet)
    nets.update(wrn28_10=partial(WideResNet, 28, 10), wrn34_10=partial(WideResNet, 34, 10))
    if key.value in nets:
        net = nets[key.value](num_classes=num_classes, **kwargs)
    else:  # resnet50
        import torchvision

        net = torchvision.models.resnet50(weights=None, num_classes=num_classes, **kwargs)
        if normalization == "cifar10":
            normalization = "imagenet"
    if weights_path is not None:
        net.load_state_dict(load_state_dict(weights_path))
    if kap:
        from .kap import apply_kap_config

        apply_kap_config(net, kap)
    if normalization and normalization not in STATS:
        raise ValueError(f"unknown normalization '{normalization}'; choose one of {sorted(STATS)}")
    mean, std = STATS[normalization] if normalization else (None, None)
    return Classifier(net, mean, std)


def load_state_dict(path: str | Path, trust: bool = False) -> dict:
    """Load a state dict (plain, or a Lightning checkpoint's ``state_dict``) with ``weights_only=True`` (no code
    can run) unless ``trust`` is set."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as e:  # pickle.UnpicklingError and friends
        if trust:
            raise
        raise RuntimeError(
            f"refusing to load {path} with weights_only=True: {e}. The file holds objects beyond "
            "tensors (loading it could run code). If you trust its source, pass trust=True "
            "(CLI: --model.init_args.trust_checkpoint true)."
        ) from e
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise RuntimeError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return obj
