"""The reversal (Mao et al., ICCV 2021): undo an attack by lowering the self-supervised loss.

Given a possibly attacked input ``x``, find ``delta`` with ``||delta|| <= eps`` (L-inf or L2) that minimizes
the contrastive (InfoNCE) loss of ``x + delta`` under random SimCLR views, by signed gradient
descent, then classify ``x + delta``. Only ``delta`` receives gradients; the classifier and the
head are used frozen (eval mode, no parameter gradients).

**Batch dependence.** InfoNCE contrasts each image's views against the views of the *other*
images in the batch, so image ``i``'s reversal depends on its batch-mates through the negatives,
and only through them: each image gets its own augmentations and its own signed step, BN runs
in eval mode, and the result is equivariant to the order of the batch (tested). Reversing one
image alone is not possible with this loss (it needs at least one negative); use batches of
similar size to those you report.

Example:
    >>> import torch
    >>> from lightning_modules.nn.backbones import build_backbone
    >>> from lightning_modules.nn.heads import ContrastiveHead
    >>> from lightning_modules.reversal import ReversalConfig, reverse
    >>> net, head = build_backbone("small_cnn", width=8).eval(), ContrastiveHead(32, 64, 16).eval()
    >>> x = torch.rand(8, 3, 32, 32)
    >>> x_rev = reverse(net, head, x, ReversalConfig(steps=2))
    >>> bool((x_rev - x).abs().max() <= 16 / 255 + 1e-6)
    True
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn as nn

from .attacks.core import ThreatModel, check_eps, frozen_params, projected_gradient
from .losses import info_nce
from .views.fast import VIEW_BACKENDS, make_views
from .views.kornia import SimCLRViews  # noqa: F401  (the default views, re-exported for callers)

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
    "mao2021": dict(
        eps=16 / 255,
        alpha=2 / 255,
        steps=40,
        n_views=4,
        random_start=True,
        jitter=(0.8, 0.8, 0.8, 0.2),
        p_jitter=1.0,
        p_gray=0.2,
        shared_views=True,
        positive="first",
        norm="Linf",
        budget_factor=2.0,
    ),
}


@dataclass
class ReversalConfig:
    """Settings of the reversal; a setting left None takes its value from ``recipe`` (:data:`RECIPES`).

    Attributes:
        recipe: ``package`` (the default) or ``mao2021`` (the authors' reference code).
        eps: radius of the reversal vector in ``norm`` (package: 16/255 L-inf).
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
    eps: Optional[float] = None
    alpha: Optional[float] = None
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
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown reversal recipe '{self.recipe}'; choose one of {list(RECIPES)}")
        for name, value in RECIPES[self.recipe].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        self.jitter = tuple(float(j) for j in self.jitter)
        self.norm = ThreatModel(self.norm).value
        check_eps(self.eps, self.norm)
        if self.steps < 0:
            raise ValueError(f"reversal steps must be >= 0, got {self.steps}")
        if self.n_views < 2:
            raise ValueError(f"reversal needs n_views >= 2 for InfoNCE, got {self.n_views}")
        if self.views not in VIEW_BACKENDS:
            raise ValueError(f"unknown reversal views '{self.views}'; choose one of {list(VIEW_BACKENDS)}")

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
        return (
            ("jitter", tuple(self.jitter)),
            ("p_jitter", self.p_jitter),
            ("p_gray", self.p_gray),
            ("shared", bool(self.shared_views)),
        )

    def make_views(self, size: int) -> nn.Module:
        """The SimCLR views this reversal uses at input side ``size``."""
        return make_views(self.n_views, size, self.scale, self.views, **dict(self.view_options()))


def ssl_loss(
    classifier: nn.Module,
    head: nn.Module,
    x: torch.Tensor,
    views: nn.Module,
    n_views: int,
    temperature: float,
    reduction: str = "none",
    positive: str = "all",
    groups: int = 1,
) -> torch.Tensor:
    """InfoNCE of ``x`` under ``n_views`` random views: per image with ``reduction="none"``.

    ``groups``: ``x`` is that many contiguous equal blocks that do not see each other (each block's
    negatives are its own images, :func:`~lightning_modules.losses.info_nce`; views that draw one
    parameter set per call draw one per block): the loss each block would have alone."""
    _, feats = classifier(grouped_views(views, x, n_views, groups))
    z = head(feats)
    with torch.autocast(z.device.type, enabled=False):  # the similarities in fp32 even under amp
        return info_nce(z.float(), n_views, temperature, reduction, positive=positive, groups=groups)


def grouped_views(views: nn.Module, x: torch.Tensor, n_views: int, groups: int = 1) -> torch.Tensor:
    """``views(x, n_views)`` (view-major rows); for views shared by the batch (``views.shared``) and
    ``groups > 1``, one draw per block of ``x`` instead of one for all, rows still view-major."""
    if groups == 1 or not getattr(views, "shared", False):
        return views(x, n_views)
    if x.shape[0] % groups:
        raise ValueError(f"{x.shape[0]} images do not split into {groups} equal groups")
    b = x.shape[0] // groups
    per_block = [views(block, n_views).view(n_views, b, *x.shape[1:]) for block in x.split(b)]
    return torch.stack(per_block, 1).reshape(n_views * x.shape[0], *x.shape[1:])


def reverse(
    classifier: nn.Module,
    head: nn.Module,
    x: torch.Tensor,
    cfg: ReversalConfig = ReversalConfig(),
    views: Optional[nn.Module] = None,
    temperature: float = 0.2,
    groups: int = 1,
) -> torch.Tensor:
    """Return the reversed images ``x + delta`` (detached, in ``[0, 1]``, ``||delta||_{cfg.norm} <= cfg.eps``).

    ``views`` defaults to :class:`~lightning_modules.views.kornia.SimCLRViews` at the input size;
    pass a deterministic callable ``views(x, n_views)`` to make the reversal reproducible.
    ``groups``: ``x`` is that many contiguous equal batches reversed independently in one call
    (each contrasts only with itself: :func:`ssl_loss`), e.g. a batch repeated for several draws.
    """
    if x.shape[0] < 2 * groups:
        raise ValueError("the reversal needs a batch of at least 2 images (InfoNCE needs negatives)")
    views = views if views is not None else cfg.make_views(x.shape[-1]).to(x.device)
    t = cfg.temperature if cfg.temperature is not None else temperature
    was_training = classifier.training, head.training
    classifier.eval(), head.eval()
    try:
        objective = lambda xr: ssl_loss(  # noqa: E731
            classifier, head, xr, views, cfg.n_views, t, positive=cfg.positive, groups=groups
        )
        with frozen_params(classifier, head):  # gradients w.r.t. the input only (matters when compiled)
            return projected_gradient(
                objective,
                x,
                cfg.eps,
                cfg.alpha,
                cfg.steps,
                cfg.norm,
                random_start=cfg.random_start,
                ascend=False,
                amp=cfg.amp,
            )
    finally:
        classifier.train(was_training[0]), head.train(was_training[1])
