"""The module's settings in small groups, each a dataclass checked when it is built (a count below 1,
a negative rate or a fraction out of range fails naming the setting instead of training something
else: PGD with ``steps: -3`` would train on the random start). Budgets read ``8/255`` or a number. A
config reads::

    model:
      class_path: lightning_modules.ReversalModule
      init_args:
        backbone: small_cnn
        attack: {mode: fgsm_rs, eps: 8/255}
        ssl: {weight: 0.2, views: fast}
        optim: {lr: 0.2, warmup: 0.4}

Checkpoints store each group as a plain dict of plain types (they load with ``weights_only=True``).

Example:
    >>> AttackConfig(mode="pgd", eps="8/255").eps == 8 / 255
    True
    >>> AttackConfig(steps=-3)
    Traceback (most recent call last):
    ...
    ValueError: attack.steps must be >= 1, got -3
    >>> build_group("optim", {"lr": 0.05}).lr
    0.05
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

from .attacks.core import ThreatModel, check_eps
from .util import parse_eps
from .views.fast import VIEW_BACKENDS, make_views

if TYPE_CHECKING:
    import torch.nn as nn


class TrainingMode(str, Enum):
    """What the classifier trains on: clean inputs, PGD-AT, TRADES or FGSM-RS (fast AT) inputs."""

    standard = "standard"
    pgd = "pgd"
    trades = "trades"
    fgsm_rs = "fgsm_rs"


POSITIVE, NON_NEGATIVE, AT_LEAST_1 = (lambda v: v > 0, "> 0"), (lambda v: v >= 0, ">= 0"), (lambda v: v >= 1, ">= 1")
FRACTION = (lambda v: 0 <= v < 1, "in [0, 1)")
N_VIEWS = (lambda v: v >= 2, ">= 2 (InfoNCE contrasts views of each image)")


def _check(group: str, obj: Any, rules: dict[str, Any]) -> None:
    """Check ``obj``'s fields: a rule is ``(predicate, what it requires)`` or the collection of the choices."""
    for name, rule in rules.items():
        value = getattr(obj, name)
        if isinstance(rule, tuple) and callable(rule[0]):
            if not rule[0](value):
                raise ValueError(f"{group}.{name} must be {rule[1]}, got {value}")
        elif value not in rule:
            raise ValueError(f"unknown {group}.{name} '{value}'; choose one of {list(rule)}")


def _budgets(obj: Any, *names: str) -> None:
    """Read the budgets given as strings (``"8/255"``) into floats."""
    for name in names:
        if isinstance(getattr(obj, name), str):
            setattr(obj, name, parse_eps(getattr(obj, name)))


@dataclass
class AttackConfig:
    """The training attack (L-inf, ``[0, 1]`` units).

    Attributes:
        mode: ``standard``, ``pgd`` (Madry PGD-AT), ``trades`` or ``fgsm_rs`` (Wong et al. fast AT).
        eps, alpha, steps: radius, step size (numbers or ``8/255``) and PGD/TRADES steps (FGSM-RS steps
            once, by 1.25 eps).
        trades_beta: TRADES trade-off.
        noise_std: with ``mode: standard``, add ``N(0, noise_std^2)`` noise to the classification inputs
            (clamped to ``[0, 1]``): Gaussian-noise training, as KAP and smoothing models are trained.
    """

    mode: str = "standard"
    eps: Union[float, str] = 8 / 255
    alpha: Union[float, str] = 2 / 255
    steps: int = 10
    trades_beta: float = 6.0
    noise_std: float = 0.0

    def __post_init__(self) -> None:
        _budgets(self, "eps", "alpha")
        _check("attack", self, {"mode": [m.value for m in TrainingMode]})
        check_eps(self.eps)
        rules = {"alpha": POSITIVE, "steps": AT_LEAST_1, "trades_beta": NON_NEGATIVE, "noise_std": NON_NEGATIVE}
        _check("attack", self, rules)
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
            positives, as in that reversal recipe (:data:`~lightning_modules.defense.reversal.RECIPES`):
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
        r = RECIPES[self.recipe]
        return dict(jitter=tuple(r["jitter"]), p_jitter=r["p_jitter"], p_gray=r["p_gray"], shared=r["shared_views"])

    @property
    def positive(self) -> str:
        return RECIPES[self.recipe]["positive"]

    def __post_init__(self) -> None:
        rules = {"weight": NON_NEGATIVE, "fraction": (lambda v: 0 < v <= 1, "in (0, 1]"), "n_views": N_VIEWS}
        _check("ssl", self, {**rules, "temperature": POSITIVE, "views": VIEW_BACKENDS, "recipe": RECIPES})
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
        rules = {"optimizer": ("sgd", "adam"), "lr": POSITIVE, "momentum": FRACTION, "weight_decay": NON_NEGATIVE}
        rules["warmup"] = (lambda v: 0 <= v < 1, "in [0, 1) (a fraction of the steps)")
        rules.update(label_smoothing=FRACTION, schedule=("onecycle", "cosine", "multistep", "constant"))
        _check("optim", self, rules)


@dataclass
class InferenceConfig:
    """The attacks outside training: PGD steps of the validation robust accuracy (0 turns it off), and
    ``predict``'s attack before the reversal (``pgd`` or ``none``) with its steps (eps/alpha: the
    training attack's)."""

    val_attack_steps: int = 10
    predict_attack: str = "pgd"
    predict_attack_steps: int = 20

    def __post_init__(self) -> None:
        rules = {"val_attack_steps": (lambda v: v >= 0, ">= 0 (0 turns the validation attack off)")}
        _check("inference", self, {**rules, "predict_attack_steps": AT_LEAST_1, "predict_attack": ("none", "pgd")})


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


#: The reversal's recipes: the values of the settings left unset (None) in :class:`ReversalConfig`.
#: ``mao2021`` is Mao et al.'s reference code (``cifar10_defense_rebAA.py``): torchvision views called
#: on the batch tensor (one draw per view for the whole batch), ColorJitter(0.8, 0.8, 0.8, 0.2)
#: always, grayscale 0.2, RandomResizedCrop(32) (scale 0.08-1) + flip, a uniform random start,
#: InfoNCE with the first positive as the label, 40 steps of 2/255, and a budget of twice the
#: attack's eps in the attack's norm (``budget_factor``; 16/255 L-inf before a threat model is set).
RECIPES: dict[str, dict] = {
    "package": dict(
        eps=16 / 255,
        alpha=2 / 255,
        steps=40,
        n_views=4,
        random_start=False,
        jitter=(0.4, 0.4, 0.4, 0.1),
        p_jitter=0.8,
        p_gray=0.2,
        shared_views=False,
        positive="all",
        norm="Linf",
        budget_factor=0.0,
    ),
}
RECIPES["mao2021"] = {**RECIPES["package"], "random_start": True, "jitter": (0.8, 0.8, 0.8, 0.2), "p_jitter": 1.0}
RECIPES["mao2021"].update(shared_views=True, positive="first", budget_factor=2.0)


@dataclass
class ReversalConfig:
    """Settings of the reversal; a setting left None takes its value from ``recipe`` (:data:`RECIPES`).

    Attributes:
        recipe: ``package`` (the default) or ``mao2021`` (the authors' reference code).
        eps: radius of the reversal vector in ``norm`` (a number or ``16/255``; package: 16/255 L-inf).
        alpha: step size (2/255).
        steps: gradient steps (40).
        n_views: SimCLR views per image in the contrastive loss (4).
        temperature: InfoNCE temperature; defaults to the head's training temperature when None.
        random_start: start from a uniform random point in the ball instead of ``x``.
        scale: random-resized-crop area range of the views.
        jitter, p_jitter, p_gray: colour-jitter strengths, its probability, the grayscale probability.
        shared_views: one parameter draw per view shared by the batch instead of one per image.
        positive: InfoNCE's positives, ``all`` or ``first`` (:func:`~lightning_modules.losses.info_nce`).
        norm: the reversal's ball, ``Linf`` or ``L2``.
        budget_factor: when > 0, :meth:`for_threat` sets ``eps = budget_factor x`` the attack's eps
            in the attack's norm (an oracle: the defender is told the attacker's budget); 0: a
            fixed budget (twice the attack's eps only for attacks in another norm).
        views: the views' implementation: ``kornia`` (:class:`~lightning_modules.views.kornia.SimCLRViews`)
            or ``fast`` (:class:`~lightning_modules.views.fast.FastSimCLRViews`: the same distribution
            in batched ops without host syncs; much faster on GPUs).
        amp: run the reversal's forward/backward under bf16 autocast (fp32 by default; report
            numbers with it only once shown equal to fp32 on the same model).

    Example:
        >>> cfg = ReversalConfig(recipe="mao2021")
        >>> cfg.shared_views, cfg.p_jitter, cfg.positive, cfg.random_start
        (True, 1.0, 'first', True)
        >>> l2 = cfg.for_threat("L2", 0.5)
        >>> l2.norm, l2.eps
        ('L2', 1.0)
        >>> ReversalConfig().for_threat("Linf", 4 / 255).eps == 16 / 255  # the package's budget is fixed
        True
        >>> ReversalConfig().for_threat("L2", 0.5).norm  # ... in its own norm
        'L2'
        >>> ReversalConfig(views="fast").override(recipe="mao2021", steps=10).positive
        'first'

    """

    recipe: str = "package"
    eps: Optional[float | str] = None
    alpha: Optional[float | str] = None
    steps: Optional[int] = None
    n_views: Optional[int] = None
    temperature: Optional[float] = None
    random_start: Optional[bool] = None
    scale: Sequence[float] = field(default_factory=lambda: (0.08, 1.0))
    jitter: Optional[Sequence[float]] = None
    p_jitter: Optional[float] = None
    p_gray: Optional[float] = None
    shared_views: Optional[bool] = None
    positive: Optional[str] = None
    norm: Optional[str] = None
    budget_factor: Optional[float] = None
    views: str = "kornia"
    amp: bool = False

    def __post_init__(self) -> None:
        _check("reversal", self, {"recipe": RECIPES})
        for name, value in RECIPES[self.recipe].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        _budgets(self, "eps", "alpha")
        self.jitter = tuple(float(j) for j in self.jitter)
        self.norm = ThreatModel(self.norm).value
        check_eps(self.eps, self.norm)
        _check("reversal", self, {"steps": NON_NEGATIVE, "n_views": N_VIEWS, "views": VIEW_BACKENDS})

    def for_threat(self, norm: str, eps: float) -> "ReversalConfig":
        """This reversal against an attack of ``eps`` in ``norm`` (``eps <= 0``, a clean input: unchanged).

        With ``budget_factor > 0``: ``budget_factor x eps`` in ``norm``. Otherwise the budget is fixed
        in the reversal's own norm, and an attack in another norm gets twice its eps in its norm
        (the package's 16/255 L-inf is twice the 8/255 attack): an L2 reversal for L2 attacks.
        """
        if not norm or eps <= 0:
            return self
        norm = ThreatModel(norm).value
        if not self.budget_factor and norm == self.norm:
            return self
        return dataclasses.replace(self, norm=norm, eps=(self.budget_factor or 2.0) * float(eps))

    def override(self, **changes) -> "ReversalConfig":
        """A copy with ``changes``; a change of ``recipe`` re-reads every recipe setting from the new
        recipe (keeping ``views``, ``amp``, ``temperature``, ``scale``) before the other changes."""
        recipe = changes.pop("recipe", self.recipe)
        if recipe == self.recipe:
            return dataclasses.replace(self, **changes) if changes else self
        keep = {k: getattr(self, k) for k in ("views", "amp", "temperature", "scale")}
        return ReversalConfig(recipe=recipe, **{**keep, **changes})

    def view_options(self) -> tuple:
        """The views' settings beyond ``(n_views, size, scale, backend)``, hashable (a cache key)."""
        kw = dict(jitter=tuple(self.jitter), p_jitter=self.p_jitter, p_gray=self.p_gray, shared=bool(self.shared_views))
        return tuple(kw.items())

    def make_views(self, size: int) -> nn.Module:
        """The SimCLR views this reversal uses at input side ``size``."""
        return make_views(self.n_views, size, self.scale, self.views, **dict(self.view_options()))


#: Every settings group by its argument name; those defined in modules that import this one by path.
GROUPS: dict[str, Any] = {"attack": AttackConfig, "ssl": SSLConfig, "optim": OptimConfig, "inference": InferenceConfig}
GROUPS.update(speed=SpeedConfig, reversal=ReversalConfig, ascl="lightning_modules.methods.ascl.ASCLConfig")


def build_group(name: str, value: Any) -> Any:
    """A group's dataclass from itself, a dict of its fields (as checkpoints store it) or ``None``."""
    cls = GROUPS[name]
    if isinstance(cls, str):
        module, _, attr = cls.rpartition(".")
        cls = GROUPS[name] = getattr(importlib.import_module(module), attr)
    if value is None or isinstance(value, cls):
        return cls() if value is None else value
    if not isinstance(value, dict):
        raise TypeError(f"{name} must be a {cls.__name__} or a dict of its fields, got {type(value).__name__}")
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ValueError(f"unknown {name} setting(s) {unknown}; {name} has: {', '.join(known)}")
    return cls(**value)


__all__ = ["TrainingMode", "AttackConfig", "SSLConfig", "OptimConfig", "InferenceConfig", "SpeedConfig"]
__all__ += ["RECIPES", "ReversalConfig", "GROUPS", "build_group"]
