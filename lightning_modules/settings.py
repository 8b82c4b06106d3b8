"""The module's settings in small groups, each a dataclass checked when it is built (a count below 1,
a negative rate or a fraction out of range fails naming the setting instead of training something
else: PGD with ``steps: -3`` would train on the random start). A config reads::

    model:
      class_path: lightning_modules.ReversalModule
      init_args:
        backbone: small_cnn
        attack: {mode: fgsm_rs, eps: 0.0313725}
        ssl: {weight: 0.2, views: fast}
        optim: {lr: 0.2, warmup: 0.4}

Checkpoints store each group as a plain dict (they load with ``weights_only=True``); a checkpoint
or config of the earlier flat layout is translated by :func:`upgrade_hparams` (checkpoints) or
refused with the new name (:func:`legacy_hint`, configs).

Example:
    >>> AttackConfig(mode="pgd", steps=10).eps == 8 / 255
    True
    >>> AttackConfig(steps=-3)
    Traceback (most recent call last):
    ...
    ValueError: attack.steps must be >= 1, got -3
    >>> upgrade_hparams({"backbone": "small_cnn", "training": "pgd", "lr": 0.05})
    {'backbone': 'small_cnn', 'attack': {'mode': 'pgd'}, 'optim': {'lr': 0.05}}
    >>> legacy_hint("Key 'ssl_weight' is not expected")
    "'ssl_weight' is now ssl.weight: write `init_args: {ssl: {weight: ...}}` (or --model.init_args.ssl.weight ...)"
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Optional, Sequence


class TrainingMode(str, Enum):
    """What the classifier trains on: clean inputs, PGD-AT, TRADES or FGSM-RS (fast AT) inputs."""

    standard = "standard"
    pgd = "pgd"
    trades = "trades"
    fgsm_rs = "fgsm_rs"


def _check(group: str, obj: Any, rules: dict[str, tuple[Callable[[Any], bool], str]]) -> None:
    for name, (ok, rule) in rules.items():
        value = getattr(obj, name)
        if not ok(value):
            raise ValueError(f"{group}.{name} must be {rule}, got {value}")


@dataclass
class AttackConfig:
    """The training attack (L-inf, ``[0, 1]`` units).

    Attributes:
        mode: ``standard``, ``pgd`` (Madry PGD-AT), ``trades`` or ``fgsm_rs`` (Wong et al. fast AT).
        eps, alpha, steps: radius, step size and PGD/TRADES steps (FGSM-RS steps once, by 1.25 eps).
        trades_beta: TRADES trade-off.
        noise_std: with ``mode: standard``, add ``N(0, noise_std^2)`` noise to the classification inputs
            (clamped to ``[0, 1]``): Gaussian-noise training, as KAP and smoothing models are trained.
    """

    mode: str = "standard"
    eps: float = 8 / 255
    alpha: float = 2 / 255
    steps: int = 10
    trades_beta: float = 6.0
    noise_std: float = 0.0

    def __post_init__(self) -> None:
        from .attacks.core import check_eps

        if self.mode not in {m.value for m in TrainingMode}:
            raise ValueError(f"unknown attack.mode '{self.mode}'; choose one of {[m.value for m in TrainingMode]}")
        check_eps(self.eps)
        _check(
            "attack",
            self,
            {
                "alpha": (lambda v: v > 0, "> 0"),
                "steps": (lambda v: v >= 1, ">= 1"),
                "trades_beta": (lambda v: v >= 0, ">= 0"),
                "noise_std": (lambda v: v >= 0, ">= 0"),
            },
        )
        if self.noise_std > 0 and self.mode != TrainingMode.standard.value:
            raise ValueError(
                f"attack.noise_std={self.noise_std}: Gaussian-noise training needs mode: standard (got '{self.mode}')"
            )


@dataclass
class SSLConfig:
    """The contrastive (InfoNCE, SimCLR-style) loss of the head during training.

    Attributes:
        weight: weight of InfoNCE in the training loss (0: the head does not train).
        fraction: the share of each batch whose views feed InfoNCE (its first images, at least 2): the
            loss costs about as much as the rest of a fast-AT step, so 0.5 buys epochs on a slow machine.
        n_views, temperature: views per image and the InfoNCE temperature.
        view_scale: random-resized-crop area range of the views.
        views: their implementation, ``kornia`` or ``fast`` (same distribution, batched, no host syncs;
            see :mod:`lightning_modules.views.fast`).
        recipe: the views' colour jitter, grayscale and per-image or batch-shared draw, and InfoNCE's
            positives, as in that reversal recipe (:data:`~lightning_modules.reversal.RECIPES`):
            ``package`` (per image, jitter 0.4/0.4/0.4/0.1 with p 0.8) or ``mao2021`` (one draw per view
            for the batch, jitter 0.8/0.8/0.8/0.2 always, first positive), as Mao et al. train their head.
    """

    weight: float = 1.0
    fraction: float = 1.0
    n_views: int = 2
    temperature: float = 0.2
    view_scale: Sequence[float] = field(default_factory=lambda: (0.08, 1.0))
    views: str = "kornia"
    recipe: str = "package"

    def view_options(self) -> dict:
        """The views' options of ``recipe`` (:func:`~lightning_modules.views.fast.make_views`)."""
        from .reversal import RECIPES

        r = RECIPES[self.recipe]
        return dict(jitter=tuple(r["jitter"]), p_jitter=r["p_jitter"], p_gray=r["p_gray"], shared=r["shared_views"])

    @property
    def positive(self) -> str:
        from .reversal import RECIPES

        return RECIPES[self.recipe]["positive"]

    def __post_init__(self) -> None:
        from .reversal import RECIPES
        from .views.fast import VIEW_BACKENDS

        _check(
            "ssl",
            self,
            {
                "weight": (lambda v: v >= 0, ">= 0"),
                "fraction": (lambda v: 0 < v <= 1, "in (0, 1]"),
                "n_views": (lambda v: v >= 2, ">= 2 (InfoNCE contrasts views of each image)"),
                "temperature": (lambda v: v > 0, "> 0"),
            },
        )
        if self.views not in VIEW_BACKENDS:
            raise ValueError(f"unknown ssl.views '{self.views}'; choose one of {list(VIEW_BACKENDS)}")
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown ssl.recipe '{self.recipe}'; choose one of {list(RECIPES)}")
        self.view_scale = tuple(float(s) for s in self.view_scale)


@dataclass
class OptimConfig:
    """SGD (or ``optimizer: adam``: Adam, betas (0.9, 0.999), ``momentum`` and ``nesterov`` unused), its
    schedule (``onecycle``, ``cosine``, ``multistep`` at 50%/75%, ``constant``) and the loss's label
    smoothing. ``warmup`` is a fraction of the steps."""

    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    schedule: str = "onecycle"
    warmup: float = 0.2
    label_smoothing: float = 0.0
    optimizer: str = "sgd"

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"unknown optim.optimizer '{self.optimizer}'; choose sgd or adam")
        _check(
            "optim",
            self,
            {
                "lr": (lambda v: v > 0, "> 0"),
                "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
                "weight_decay": (lambda v: v >= 0, ">= 0"),
                "warmup": (lambda v: 0 <= v < 1, "in [0, 1) (a fraction of the steps)"),
                "label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
            },
        )
        if self.schedule not in ("onecycle", "cosine", "multistep", "constant"):
            raise ValueError(f"unknown optim.schedule '{self.schedule}'; choose onecycle, cosine, multistep, constant")


@dataclass
class InferenceConfig:
    """The attacks outside training: PGD steps of the validation robust accuracy (0 turns it off), and
    ``predict``'s attack before the reversal (``pgd`` or ``none``) with its steps (eps/alpha: the
    training attack's)."""

    val_attack_steps: int = 10
    predict_attack: str = "pgd"
    predict_attack_steps: int = 20

    def __post_init__(self) -> None:
        _check(
            "inference",
            self,
            {
                "val_attack_steps": (lambda v: v >= 0, ">= 0 (0 turns the validation attack off)"),
                "predict_attack_steps": (lambda v: v >= 1, ">= 1"),
            },
        )
        if self.predict_attack not in ("none", "pgd"):
            raise ValueError(f"inference.predict_attack must be 'none' or 'pgd', got '{self.predict_attack}'")


@dataclass
class SpeedConfig:
    """Settings that change speed, not results (measure before turning one on).

    Attributes:
        channels_last: channels-last memory format for the backbone.
        attack_amp: run training attacks under bf16 autocast (evaluation attacks are always fp32).
        compile: ``torch.compile`` the classifier in place (checkpoints keep their keys) when the Trainer
            sets the model up; ``compile_mode`` is passed on (``reduce-overhead`` for CUDA graphs...).
        train_progress_bar: show the training loss/accuracy in the progress bar. Lightning converts
            progress-bar values to Python numbers after every batch (3 host syncs a step) whether or not
            a bar is shown; ``false`` keeps the training loop free of host syncs (values still logged).
    """

    channels_last: bool = False
    attack_amp: bool = False
    compile: bool = False
    compile_mode: Optional[str] = None
    train_progress_bar: bool = True


GROUPS: dict[str, type] = {
    "attack": AttackConfig,
    "ssl": SSLConfig,
    "optim": OptimConfig,
    "inference": InferenceConfig,
    "speed": SpeedConfig,
}

# the earlier flat settings -> (group, field)
FLAT_KEYS: dict[str, tuple[str, str]] = {
    "training": ("attack", "mode"),
    "eps": ("attack", "eps"),
    "alpha": ("attack", "alpha"),
    "steps": ("attack", "steps"),
    "trades_beta": ("attack", "trades_beta"),
    "noise_std": ("attack", "noise_std"),
    "ssl_weight": ("ssl", "weight"),
    "ssl_fraction": ("ssl", "fraction"),
    "n_views": ("ssl", "n_views"),
    "temperature": ("ssl", "temperature"),
    "view_scale": ("ssl", "view_scale"),
    "views_backend": ("ssl", "views"),
    "lr": ("optim", "lr"),
    "momentum": ("optim", "momentum"),
    "weight_decay": ("optim", "weight_decay"),
    "nesterov": ("optim", "nesterov"),
    "schedule": ("optim", "schedule"),
    "warmup": ("optim", "warmup"),
    "label_smoothing": ("optim", "label_smoothing"),
    "val_attack_steps": ("inference", "val_attack_steps"),
    "predict_attack": ("inference", "predict_attack"),
    "predict_attack_steps": ("inference", "predict_attack_steps"),
    "channels_last": ("speed", "channels_last"),
    "attack_amp": ("speed", "attack_amp"),
    "compile": ("speed", "compile"),
    "compile_mode": ("speed", "compile_mode"),
    "train_progress_bar": ("speed", "train_progress_bar"),
}


def build_group(name: str, value: Any) -> Any:
    """A group's dataclass from itself, a dict of its fields (as checkpoints store it) or ``None``."""
    cls = GROUPS[name]
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        unknown = sorted(set(value) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            known = ", ".join(f.name for f in dataclasses.fields(cls))
            raise ValueError(f"unknown {name} setting(s) {unknown}; {name} has: {known}")
        return cls(**value)
    raise TypeError(f"{name} must be a {cls.__name__} or a dict of its fields, got {type(value).__name__}")


def upgrade_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters of the earlier flat layout (old checkpoints) in the grouped one; others unchanged."""
    out = {k: v for k, v in hparams.items() if k not in FLAT_KEYS}
    for key, value in hparams.items():
        if key in FLAT_KEYS:
            group, name = FLAT_KEYS[key]
            out.setdefault(group, {})
            if isinstance(out[group], dict) and name not in out[group]:
                out[group] = {**out[group], name: value}
    return out


def rejected_keys(message: str) -> list[str]:
    """The setting names a parser error rejects (``Key 'eps' is not expected``, ``--a.b.eps``)."""
    keys = re.findall(r"[\"'`]?([a-z_]+)[\"'`]? (?:is not expected|is not accepted)", message)
    return keys + re.findall(r"--[\w.]*\.([a-z_]+)\b", message)


def legacy_hint(message: str) -> Optional[str]:
    """For a parser error naming a flat setting of the earlier layout, where it lives now."""
    for key in rejected_keys(message):
        if key in FLAT_KEYS:
            group, name = FLAT_KEYS[key]
            return (
                f"'{key}' is now {group}.{name}: write `init_args: {{{group}: {{{name}: ...}}}}` "
                f"(or --model.init_args.{group}.{name} ...)"
            )
    return None


__all__ = [
    "TrainingMode",
    "AttackConfig",
    "SSLConfig",
    "OptimConfig",
    "InferenceConfig",
    "SpeedConfig",
    "GROUPS",
    "FLAT_KEYS",
    "build_group",
    "upgrade_hparams",
    "rejected_keys",
    "legacy_hint",
]
