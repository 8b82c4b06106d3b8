"""Adaptive attacks on the reversal: attacks that know the defense is there (Croce et al., ICML 2022).

A test-time defense such as the reversal is only as good as the strongest attack that accounts
for it. The four attacks here each model the defended classifier ``x -> f(reverse(x))``
differently; the evaluation (:mod:`lightning_modules.evaluation`) reports each as its own row and
the worst case per example over all of them.

1. :func:`defense_aware` (Mao et al. 2021, Sec. 5.4): maximize ``CE(f(x), y) - lambda_s * L_ssl(x)``
   so the adversarial example already has a low contrastive loss and the reversal has little to undo.
2. :func:`bpda_eot`: BPDA (Athalye et al. 2018) with the reversal as the identity on the backward
   pass, ``x + (reverse(x) - x).detach()`` (straight-through), with the gradient averaged over
   ``eot`` fresh draws of the reversal's random views (EOT).
3. :func:`full_gradient`: back-propagate through the unrolled reversal
   (:func:`reverse_differentiable`, second-order gradients, gradient checkpointing per step), with
   EOT. The reversal's steps are signed gradients, whose exact derivative is zero almost
   everywhere; the backward pass therefore uses the derivative of ``tanh(g / tau)`` (``tau``
   proportional to the mean ``|g|`` of each image) while the forward pass stays the exact reversal.
4. :func:`transfer`: PGD crafted on a surrogate, by default the undefended classifier.

:class:`ReversalFns` bundles the callables these attacks (and the evaluation) need, built from a
classifier, a contrastive head and a :class:`~lightning_modules.reversal.ReversalConfig`.

Example:
    >>> import torch
    >>> from lightning_modules.attacks.adaptive import ReversalFns, bpda_eot
    >>> from lightning_modules.nn.backbones import build_backbone
    >>> from lightning_modules.nn.heads import ContrastiveHead
    >>> from lightning_modules.reversal import ReversalConfig
    >>> net, head = build_backbone("small_cnn", width=8).eval(), ContrastiveHead(32, 64, 16).eval()
    >>> fns = ReversalFns(net, head, ReversalConfig(steps=2))
    >>> x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    >>> x_adv = bpda_eot(fns.model_fn, fns.reverse, x, y, eps=8 / 255, alpha=2 / 255, steps=2, eot=2)
    >>> bool((x_adv - x).abs().max() <= 8 / 255 + 1e-6)
    True
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from ..reversal import ReversalConfig, reverse, ssl_loss
from .core import LOSSES, check_eps, logits_of, pgd, projected_gradient
from .defense_attacks import StandIn, chunks

Fn = Callable[[torch.Tensor], torch.Tensor]
Observer = Callable[[torch.Tensor, torch.Tensor], None]


# ---------------------------------------------------------------------------------------------
# The differentiable (unrolled) reversal
def smooth_sign(g: torch.Tensor, smooth: float = 0.3) -> torch.Tensor:
    """``sign(g)`` on the forward pass; the derivative of ``tanh(g / tau)`` on the backward pass,
    with ``tau = smooth * mean(|g|)`` per example. ``smooth=0`` keeps the exact (zero) derivative."""
    s = g.sign()
    if smooth <= 0:
        return s
    tau = smooth * g.detach().abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, *[1] * (g.ndim - 1))
    t = torch.tanh(g / tau)
    return t + (s - t).detach()


def reverse_differentiable(
    classifier: nn.Module,
    head: nn.Module,
    x: torch.Tensor,
    cfg: ReversalConfig = ReversalConfig(),
    views: Optional[Callable] = None,
    temperature: float = 0.2,
    steps: Optional[int] = None,
    smooth: float = 0.3,
    use_checkpoint: bool = True,
) -> torch.Tensor:
    """The reversal unrolled so that its output is differentiable w.r.t. ``x`` (second order).

    The forward pass draws the same random numbers in the same order as
    :func:`~lightning_modules.reversal.reverse`, so under the same seed it returns the same images
    (tested); only the backward pass differs (see :func:`smooth_sign`). ``steps`` unrolls fewer
    steps than ``cfg.steps`` (cheaper attack model); ``use_checkpoint`` recomputes each step on the
    backward pass (memory of one step instead of all, about twice the compute; the random views are
    replayed exactly). The classifier and head must be in eval mode.
    """
    if x.shape[0] < 2:
        raise ValueError("the reversal needs a batch of at least 2 images (InfoNCE needs negatives)")
    if cfg.norm != "Linf":
        raise NotImplementedError("the unrolled reversal has the L-inf (signed) step only")
    views = views if views is not None else cfg.make_views(x.shape[-1]).to(x.device)
    t = cfg.temperature if cfg.temperature is not None else temperature
    steps = cfg.steps if steps is None else steps
    x = x.float()
    if cfg.random_start and cfg.eps > 0:
        delta = (torch.rand_like(x) * 2 - 1) * cfg.eps
    else:
        delta = torch.zeros_like(x)
    delta = (x + delta).clamp(0, 1) - x

    def step(x_: torch.Tensor, delta_: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            xr = x_ + delta_
            if not xr.requires_grad:  # nothing upstream needs gradients: still take this step's gradient
                xr = xr.detach().requires_grad_(True)
            with torch.autocast(xr.device.type, dtype=torch.bfloat16, enabled=cfg.amp):  # as the reversal runs
                loss = ssl_loss(classifier, head, xr, views, cfg.n_views, t, positive=cfg.positive).float().sum()
            (g,) = torch.autograd.grad(loss, xr, create_graph=x_.requires_grad)
            d = (delta_ - cfg.alpha * smooth_sign(g, smooth)).clamp(-cfg.eps, cfg.eps)
            return (x_ + d).clamp(0, 1) - x_

    for _ in range(steps):
        if use_checkpoint and x.requires_grad:
            delta = checkpoint(step, x, delta, use_reentrant=False)
        else:
            delta = step(x, delta)
    return x + delta


# ---------------------------------------------------------------------------------------------
class ReversalFns:
    """The callables of one defended model: classifier ``model_fn``, the reversal and its loss.

    Args:
        classifier: ``x in [0, 1] -> (logits, features)`` (a :class:`~lightning_modules.nn.backbones.Classifier`).
        head: the contrastive head on the features.
        cfg: the reversal's settings (the defense as deployed).
        temperature: InfoNCE temperature when ``cfg.temperature`` is None (the head's training one).
        views: a callable ``views(x, n_views)`` to use instead of the SimCLR views ``cfg`` describes.

    Attributes / methods: ``model_fn(x)`` logits; ``reverse(x)`` the reversal (detached);
    ``reverse_steps(x, k)`` the reversal with ``k`` steps; ``ssl(x)`` per-image InfoNCE under the
    reversal's views; ``reverse_diff(x, steps, smooth, use_checkpoint)`` the unrolled reversal.
    """

    def __init__(
        self,
        classifier: nn.Module,
        head: nn.Module,
        cfg: ReversalConfig = ReversalConfig(),
        temperature: float = 0.2,
        views: Optional[Callable] = None,
    ) -> None:
        self.classifier, self.head, self.cfg, self.temperature = classifier, head, cfg, temperature
        self.views = views
        self._views_cache: dict[tuple, nn.Module] = {}

    @classmethod
    def from_module(cls, module: nn.Module, **overrides) -> "ReversalFns":
        """From a :class:`~lightning_modules.module.ReversalModule` (``classifier``, ``head``,
        ``reversal_cfg``, ``ssl_cfg.temperature``); ``overrides`` replace fields of its reversal config."""
        cfg = module.reversal_cfg.override(**overrides)
        fns = cls(module.classifier, module.head, cfg, float(module.ssl_cfg.temperature))
        fns._views_cache = module._reversal_views  # one cache of the reversal's views per module (same keys)
        return fns

    def for_threat(self, norm: str, eps: float) -> "ReversalFns":
        """These callables with the reversal set for an attack of ``eps`` in ``norm``
        (:meth:`~lightning_modules.reversal.ReversalConfig.for_threat`); the views cache is shared."""
        cfg = self.cfg.for_threat(norm, eps)
        if cfg is self.cfg:
            return self
        fns = type(self)(self.classifier, self.head, cfg, self.temperature, self.views)
        fns._views_cache = self._views_cache
        return fns

    @property
    def t(self) -> float:
        return self.cfg.temperature if self.cfg.temperature is not None else self.temperature

    def _views(self, x: torch.Tensor) -> Callable:
        if self.views is not None:
            return self.views
        key = (self.cfg.n_views, x.shape[-1], tuple(self.cfg.scale), self.cfg.views, x.device, self.cfg.view_options())
        if key not in self._views_cache:
            self._views_cache[key] = self.cfg.make_views(x.shape[-1]).to(x.device)
        return self._views_cache[key]

    def model_fn(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(self.classifier, x)

    def reverse(self, x: torch.Tensor, groups: int = 1) -> torch.Tensor:
        return reverse(self.classifier, self.head, x, self.cfg, self._views(x), self.temperature, groups)

    def reverse_steps(self, x: torch.Tensor, steps: int, groups: int = 1) -> torch.Tensor:
        cfg = dataclasses.replace(self.cfg, steps=steps)
        return reverse(self.classifier, self.head, x, cfg, self._views(x), self.temperature, groups)

    def reverse_groups(self, x: torch.Tensor, groups: int, steps: Optional[int] = None) -> torch.Tensor:
        """``groups`` contiguous equal batches of ``x`` reversed independently in one call (``steps``: fewer)."""
        return self.reverse(x, groups) if steps is None else self.reverse_steps(x, steps, groups)

    def ssl(self, x: torch.Tensor) -> torch.Tensor:
        return ssl_loss(
            self.classifier, self.head, x, self._views(x), self.cfg.n_views, self.t, positive=self.cfg.positive
        )

    def reverse_diff(
        self, x: torch.Tensor, steps: Optional[int] = None, smooth: float = 0.3, use_checkpoint: bool = True
    ) -> torch.Tensor:
        return reverse_differentiable(
            self.classifier, self.head, x, self.cfg, self._views(x), self.temperature, steps, smooth, use_checkpoint
        )


# ---------------------------------------------------------------------------------------------
# The attacks. Each returns x_adv within the eps-ball of x (in [0, 1]); restarts keep, per
# example, the first run that fools the *defended* prediction when ``defended`` is given.
def _loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if name not in LOSSES:
        raise ValueError(f"unknown attack loss '{name}'; choose one of {sorted(LOSSES)}")
    return LOSSES[name]


def _with_restarts(
    run: Callable[[], torch.Tensor], x: torch.Tensor, y: torch.Tensor, restarts: int, defended: Optional[Fn]
) -> torch.Tensor:
    best, fooled = None, None
    for _ in range(max(1, restarts)):
        xa = run()
        if defended is None or restarts <= 1:
            if best is None:
                best = xa
            continue
        with torch.no_grad():
            f_ = logits_of(defended, xa).argmax(1) != y
        if best is None:
            best, fooled = xa, f_
            continue
        take = f_ & ~fooled
        best = torch.where(take.view(-1, *[1] * (x.ndim - 1)), xa, best)
        fooled = fooled | f_
    return best


def defense_aware(
    model_fn: Fn,
    ssl_fn: Fn,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
    norm: str = "Linf",
    lam: float = 1.0,
    restarts: int = 1,
    loss: str = "ce",
    defended: Optional[Fn] = None,
    on_step: Optional[Callable[[int, torch.Tensor], None]] = None,
) -> torch.Tensor:
    """Mao et al.'s defense-aware attack: PGD ascending ``loss(f(x), y) - lam * ssl_fn(x)``;
    ``on_step(k, x_k)`` sees every iterate (its forward pass never runs the reversal)."""
    check_eps(eps, norm)
    lf = _loss(loss)

    def objective(xa: torch.Tensor) -> torch.Tensor:
        return lf(logits_of(model_fn, xa), y) - lam * ssl_fn(xa)

    return _with_restarts(
        lambda: projected_gradient(objective, x, eps, alpha, steps, norm, on_step=on_step), x, y, restarts, defended
    )


def bpda_eot(
    model_fn: Fn,
    reverse_fn: Fn,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
    norm: str = "Linf",
    eot: int = 4,
    restarts: int = 1,
    loss: str = "ce",
    defended: Optional[Fn] = None,
    observe: Optional[Observer] = None,
) -> torch.Tensor:
    """PGD on ``loss(f(reverse(x)), y)`` with the reversal straight-through, the gradient averaged over
    ``eot`` independent reversals (fresh random views each). ``observe(x, logits)`` sees every
    defended draw (:class:`~lightning_modules.attacks.defense_attacks.BestIterate`)."""
    check_eps(eps, norm)
    lf, net = _loss(loss), StandIn(model_fn, reverse_fn, mode="bpda", observe=observe)

    def objective(xa: torch.Tensor) -> torch.Tensor:
        return sum(lf(net(xa), y) for _ in range(max(1, eot))) / max(1, eot)

    return _with_restarts(lambda: projected_gradient(objective, x, eps, alpha, steps, norm), x, y, restarts, defended)


def full_gradient(
    model_fn: Fn,
    reverse_diff_fn: Fn,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
    norm: str = "Linf",
    eot: int = 1,
    restarts: int = 1,
    loss: str = "ce",
    batch_size: Optional[int] = None,
    defended: Optional[Fn] = None,
    observe: Optional[Observer] = None,
) -> torch.Tensor:
    """PGD on ``loss(f(reverse_diff_fn(x)), y)``, back-propagating through the unrolled reversal,
    averaged over ``eot`` draws. ``batch_size`` attacks the batch in chunks to save memory (the
    attacker's reversal then sees only the chunk as negatives; the defense is evaluated as deployed).
    ``observe(x, logits)`` sees every draw (the unrolled forward pass is the exact reversal)."""
    check_eps(eps, norm)
    lf = _loss(loss)
    net = StandIn(model_fn, reverse_diff_fn=reverse_diff_fn, mode="full", observe=observe)

    def run_chunk(xc: torch.Tensor, yc: torch.Tensor) -> torch.Tensor:
        def objective(xa: torch.Tensor) -> torch.Tensor:
            return sum(lf(net(xa), yc) for _ in range(max(1, eot))) / max(1, eot)

        return projected_gradient(objective, xc, eps, alpha, steps, norm)

    def run() -> torch.Tensor:
        if batch_size is None or batch_size >= len(x):
            return run_chunk(x, y)
        return torch.cat([run_chunk(x[s:e], y[s:e]) for s, e in chunks(len(x), batch_size)])

    return _with_restarts(run, x, y, restarts, defended)


def transfer(
    surrogate_fn: Fn,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
    norm: str = "Linf",
    restarts: int = 1,
    loss: str = "ce",
) -> torch.Tensor:
    """PGD crafted on ``surrogate_fn`` (default in the evaluation: the undefended classifier)."""
    return pgd(surrogate_fn, x, y, eps, alpha, steps, norm, loss=loss, restarts=restarts)


__all__ = [
    "smooth_sign",
    "reverse_differentiable",
    "ReversalFns",
    "defense_aware",
    "bpda_eot",
    "full_gradient",
    "transfer",
]
