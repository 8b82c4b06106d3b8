"""Weights that come from files, checked before they land: a backbone's weights loaded into a
classifier (state dict or Lightning checkpoint), and a whole checkpoint checked against the module
it is about to fill, with errors that name both architectures instead of listing keys.

Example:
    >>> import torch
    >>> from lightning_modules.nn.backbones import build_backbone
    >>> net = build_backbone("small_cnn", width=8)
    >>> torch.save(build_backbone("small_cnn", width=16).state_dict(), "/tmp/w16.pt")
    >>> load_backbone_weights(net, "/tmp/w16.pt", "small_cnn {'width': 8}")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    RuntimeError: checkpoint /tmp/w16.pt does not fit backbone small_cnn {'width': 8}: size mismatch for ...
"""

from __future__ import annotations

from typing import Any, Optional

import torch.nn as nn

from ..nn.backbones import Classifier, build_backbone, load_state_dict


def _short(keys: list, n: int = 5) -> str:
    return f"{keys[:n]}{'...' if len(keys) > n else ''}"


def build_classifier(
    backbone: str,
    num_classes: int,
    normalization: Optional[str],
    backbone_kwargs: Optional[dict],
    freeze: Optional[bool],
    trust: bool,
    robustbench: tuple = (None, "cifar10", "Linf", "models"),
) -> tuple[Classifier, Optional[bool]]:
    """The module's classifier and whether to freeze it: the RobustBench zoo model ``robustbench`` =
    ``(name, dataset, threat model, model_dir)`` from local files when a name is given (frozen unless
    ``freeze`` is false), else a fresh :func:`~lightning_modules.nn.backbones.build_backbone`."""
    name, dataset, threat_model, model_dir = robustbench
    if name is None:
        return build_backbone(backbone, num_classes, normalization, **(backbone_kwargs or {})), freeze
    from ..nn.robustbench_models import load_robustbench

    net = load_robustbench(name, dataset, threat_model, model_dir, trust=trust)
    return Classifier(net), True if freeze is None else freeze  # zoo models normalize inside


def load_backbone_weights(classifier: nn.Module, path: str, describe: str, trust: bool = False) -> None:
    """Load ``path`` (a state dict of the network or of a :class:`~lightning_modules.nn.backbones.Classifier`,
    or a Lightning checkpoint of a module holding one as ``classifier``) into ``classifier``; a shape or
    key mismatch fails naming the file and ``describe`` (the backbone's name and arguments)."""
    sd = load_state_dict(path, trust=trust)
    if any(k.startswith("classifier.") for k in sd):
        sd = {k[len("classifier.") :]: v for k, v in sd.items() if k.startswith("classifier.")}
    target = classifier if any(k.startswith(("net.", "normalize.")) for k in sd) else classifier.net
    own = target.state_dict()
    bad = [k for k, v in sd.items() if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)]
    shapes = [f"size mismatch for {k}: checkpoint {tuple(sd[k].shape)}, model {tuple(own[k].shape)}" for k in bad]
    if shapes:
        more = "..." if len(shapes) > 3 else ""
        raise RuntimeError(f"checkpoint {path} does not fit backbone {describe}: {'; '.join(shapes[:3])}{more}")
    missing, unexpected = target.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.startswith("normalize.")]
    if missing or unexpected:
        raise RuntimeError(
            f"checkpoint {path} does not fit backbone {describe}: missing {_short(missing)}, "
            f"unexpected {_short(unexpected)}"
        )


def check_checkpoint_fits(
    checkpoint: dict[str, Any], own: dict[str, Any], ours: tuple, strict: bool = True, path: Optional[str] = None
) -> None:
    """Refuse a checkpoint whose classifier differs from the module's (``own``: its state dict; ``ours``:
    its ``(backbone name, backbone kwargs)``), naming both; Lightning's strict loading lists keys only."""
    sd = checkpoint.get("state_dict") or {}
    shapes = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in sd and k.startswith("classifier.")]
    unexpected = [k for k in sd if k not in own and k.startswith("classifier.")]
    if not shapes and not ((missing or unexpected) and strict):
        return
    hp = checkpoint.get("hyper_parameters") or {}
    theirs = (hp.get("robustbench_model") or hp.get("backbone", "?"), hp.get("backbone_kwargs") or {})
    saved = f"; it was saved from '{theirs[0]}' {theirs[1]}" if theirs != ours else ""
    raise RuntimeError(
        f"checkpoint{' ' + str(path) if path else ''} does not fit this model (backbone '{ours[0]}' {ours[1]}){saved}: "
        f"shapes differ for {shapes[:3]}, missing {missing[:3]}, unexpected {unexpected[:3]}. Build the model "
        "with the checkpoint's settings (the CLI reads them from the checkpoint's hyperparameters)."
    )
