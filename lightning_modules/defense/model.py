"""The defended model: a classifier, its contrastive head and the reversal, as predicted and as scored.

:class:`DefendedModel` holds the classifier, the head, the reversal's settings and one cache of views, and
gives every use of the defense: the undefended logits, the reversal (fewer ``steps``, independent
``groups``), its differentiable twin, the contrastive loss, the defended logits and the scoring over draws.

The reversal is randomized (views) and batch-dependent (InfoNCE negatives), so
:meth:`~DefendedModel.correct_draws` counts per example the correct draws of ``draws`` independent
reversals (robust: all correct). ``composition`` chooses the batch-mates: the attacked batch (``batch``),
clean ones (``clean_mates``) or small batches (``batch2``, ``batch16``). All draws run in one call, the
batch repeated, each copy contrasting only with itself (the same distribution, larger kernels), unless
:meth:`~DefendedModel.one_call_per_draw`. ``stop_after_wrong`` reverses again only the examples the first
draw classified correctly (among themselves, in the same composition).

Example:
    >>> import torch
    >>> from lightning_modules.defense import DefendedModel
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    >>> d = DefendedModel.of(net, reverse_fn=lambda x: x)  # a deterministic "reversal"
    >>> x, y = torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])
    >>> counts = d.correct_draws(x, y, draws=3)
    >>> bool(((counts == 0) | (counts == 3)).all())
    True
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Callable, Optional

import torch
import torch.nn as nn

from ..attacks.core import logits_of
from .reversal import ReversalConfig, reverse, reverse_differentiable, ssl_loss

Fn = Callable[[torch.Tensor], torch.Tensor]


def chunks(n: int, size: int) -> list[tuple[int, int]]:
    """``[start, end)`` chunks of ``size`` covering ``n`` items, a 1-item tail merged into the previous
    chunk (the reversal needs at least two images)."""
    starts = list(range(0, n, size))
    if len(starts) > 1 and n - starts[-1] < 2:
        starts.pop()
    return list(zip(starts, starts[1:] + [n]))


class DefendedModel:
    """A classifier defended by the reversal (see the module doc).

    Args:
        classifier: ``x in [0, 1] -> (logits, features)`` (a :class:`~lightning_modules.nn.backbones.Classifier`)
            or any ``x -> logits``.
        head: the contrastive head on the features (None: an undefended model).
        cfg: the reversal's settings (the defense as deployed).
        temperature: InfoNCE temperature when ``cfg.temperature`` is None (the head's training one).
        views: a callable ``views(x, n_views)`` instead of the SimCLR views ``cfg`` describes.
        views_cache: the cache of views built from ``cfg`` (a module's, to share it).
        surrogate_fn: an independent model's logits (the transfer attack); None: no transfer row.
    """

    def __init__(
        self,
        classifier: Callable,
        head: Optional[nn.Module] = None,
        cfg: Optional[ReversalConfig] = None,
        temperature: float = 0.2,
        *,
        views: Optional[Callable] = None,
        views_cache: Optional[dict] = None,
        surrogate_fn: Optional[Fn] = None,
    ) -> None:
        self.classifier, self.head, self.cfg = classifier, head, cfg or ReversalConfig()
        self.temperature, self.views, self.surrogate_fn = temperature, views, surrogate_fn
        self.views_cache: dict = {} if views_cache is None else views_cache
        self.group_draws = True  # the draws of a batch reversed in one call
        self.fns: dict[str, Callable] = {}  # the defense given as callables (:meth:`of`)
        self._per_threat: dict[tuple, DefendedModel] = {}

    @classmethod
    def from_module(cls, module: nn.Module, cfg: Optional[ReversalConfig] = None, **kw) -> "DefendedModel":
        """From a :class:`~lightning_modules.methods.base.BaseModule` (``classifier``, ``head``, ``reversal_cfg``
        unless ``cfg``, ``ssl_cfg.temperature``), sharing its cache of views."""
        t, cache = float(module.ssl_cfg.temperature), module._reversal_views
        return cls(module.classifier, module.head, cfg or module.reversal_cfg, t, views_cache=cache, **kw)

    @classmethod
    def of(
        cls,
        model_fn: Fn,
        reverse_fn: Optional[Fn] = None,
        ssl_fn: Optional[Fn] = None,
        *,
        reverse_diff_fn: Optional[Callable] = None,
        reverse_groups_fn: Optional[Callable] = None,
        surrogate_fn: Optional[Fn] = None,
    ) -> "DefendedModel":
        """A defense given by its callables: ``reverse_fn(x)``, ``ssl_fn(x)`` (per image),
        ``reverse_diff_fn(x, steps, smooth, use_checkpoint)``, ``reverse_groups_fn(x, groups, steps)``."""
        d = cls(model_fn, surrogate_fn=surrogate_fn)
        given = dict(reverse=reverse_fn, ssl=ssl_fn, reverse_diff=reverse_diff_fn, reverse_groups=reverse_groups_fn)
        d.fns = {k: f for k, f in given.items() if f is not None}
        return d

    def has(self, need: str) -> bool:
        """Whether the defense has ``need``: ``reverse``, ``ssl``, ``reverse_diff``, ``reverse_steps``
        or ``surrogate`` (a ``_fn`` suffix is allowed)."""
        need = need.removesuffix("_fn")
        if need == "surrogate":
            return self.surrogate_fn is not None
        if self.head is not None:
            return need in ("reverse", "ssl", "reverse_diff", "reverse_steps")
        return need in self.fns or (need == "reverse_steps" and "reverse_groups" in self.fns)

    @property
    def t(self) -> float:
        return self.cfg.temperature if self.cfg.temperature is not None else self.temperature

    def _derived(self, **changes) -> "DefendedModel":
        d = copy.copy(self)
        d._per_threat = {}
        d.__dict__.update(changes)
        return d

    def for_threat(self, norm: str, eps: float) -> "DefendedModel":
        """This defense with the reversal set for an attack of ``eps`` in ``norm``
        (:meth:`~lightning_modules.defense.reversal.ReversalConfig.for_threat`); the views cache is shared."""
        key = (str(norm), float(eps))
        if key not in self._per_threat:
            cfg = self.cfg.for_threat(norm, eps)
            self._per_threat[key] = self if cfg is self.cfg or self.head is None else self._derived(cfg=cfg)
        return self._per_threat[key]

    def one_call_per_draw(self) -> "DefendedModel":
        """This defense reversing one draw per call."""
        if self.group_draws and "one_call" not in self._per_threat:
            self._per_threat["one_call"] = self._derived(group_draws=False)
        return self._per_threat["one_call"] if self.group_draws else self

    def _views(self, x: torch.Tensor) -> Callable:
        if self.views is not None:
            return self.views
        c = self.cfg
        key = (c.n_views, x.shape[-1], tuple(c.scale), c.views, x.device, c.view_options())
        if key not in self.views_cache:  # built once per setting (kornia: ~3 ms a build on CPU)
            self.views_cache[key] = c.make_views(x.shape[-1]).to(x.device)
        return self.views_cache[key]

    # -- the model and the reversal ------------------------------------------------------------
    def model_fn(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(self.classifier, x)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model_fn(x).argmax(1)

    def reverse(self, x: torch.Tensor, groups: int = 1, steps: Optional[int] = None) -> torch.Tensor:
        """The reversal of ``x`` (detached): ``groups`` contiguous equal batches reversed independently
        in one call; ``steps``: that many steps instead of the reversal's own."""
        if self.head is None:
            if groups > 1 or steps is not None:
                return self.fns["reverse_groups"](x, groups, steps)
            return self.fns["reverse"](x)
        cfg = self.cfg if steps is None else dataclasses.replace(self.cfg, steps=steps)
        return reverse(self.classifier, self.head, x, cfg, self._views(x), self.temperature, groups)

    def reverse_differentiable(
        self, x: torch.Tensor, steps: Optional[int] = None, smooth: float = 0.3, use_checkpoint: bool = True
    ) -> torch.Tensor:
        """The unrolled reversal, differentiable w.r.t. ``x`` (:func:`~.reversal.reverse_differentiable`)."""
        if self.head is None:
            return self.fns["reverse_diff"](x, steps, smooth, use_checkpoint)
        args = (self.cfg, self._views(x), self.temperature, steps, smooth, use_checkpoint)
        return reverse_differentiable(self.classifier, self.head, x, *args)

    def ssl(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image InfoNCE under the reversal's views (the defense-aware attack's loss)."""
        if self.head is None:
            return self.fns["ssl"](x)
        c = self.cfg
        return ssl_loss(self.classifier, self.head, x, self._views(x), c.n_views, self.t, positive=c.positive)

    def defended_logits(
        self, x: torch.Tensor, mates: Optional[torch.Tensor] = None, steps: Optional[int] = None
    ) -> torch.Tensor:
        """One random draw of the reversal, then the classifier; a single image is reversed beside
        ``mates[0]`` (it needs a negative)."""
        if len(x) >= 2:
            return self.model_fn(self.reverse(x, steps=steps))
        pad = mates[:1] if mates is not None and len(mates) else x
        return self.model_fn(self.reverse(torch.cat([x, pad]), steps=steps)[:1])

    # -- scoring over draws --------------------------------------------------------------------
    def _plan(
        self, x_adv: torch.Tensor, x_clean: Optional[torch.Tensor], composition: str, groups: int
    ) -> tuple[list[torch.Tensor], Callable[[list[torch.Tensor]], torch.Tensor]]:
        """The reversal inputs one draw of ``composition`` needs, and how their outputs make the batch."""
        if composition == "batch":
            return [x_adv], lambda outs: outs[0]
        if composition.startswith("batch"):
            return [x_adv[s:e] for s, e in chunks(len(x_adv), int(composition[5:]))], torch.cat
        if composition != "clean_mates":
            raise ValueError(f"unknown composition '{composition}'")
        pos = torch.arange(len(x_adv), device=x_adv.device)
        mine = [pos % groups == g for g in range(min(groups, len(x_adv)))]
        shape = (-1, *[1] * (x_adv.ndim - 1))

        def assemble(outs: list[torch.Tensor]) -> torch.Tensor:
            out = torch.empty_like(x_adv)
            for m, o in zip(mine, outs):
                out[m] = o[m]
            return out

        return [torch.where(m.view(shape), x_adv, x_clean) for m in mine], assemble

    def _run(self, inputs: list[torch.Tensor], steps: Optional[int]) -> list[torch.Tensor]:
        """Reverse every input: one call per input size when the draws are grouped, else one call each."""
        if not self.group_draws or (self.head is None and "reverse_groups" not in self.fns):
            return [self.reverse(x, steps=steps) for x in inputs]
        outs: list[Optional[torch.Tensor]] = [None] * len(inputs)
        rev = self.fns["reverse_groups"] if self.head is None else self.reverse
        for size in dict.fromkeys(len(x) for x in inputs):
            at = [i for i, x in enumerate(inputs) if len(x) == size]
            xr = rev(torch.cat([inputs[i] for i in at]), len(at), steps)
            for i, o in zip(at, xr.split(size)):
                outs[i] = o
        return outs

    def _count(self, x_adv, y, draws, composition, x_clean, groups, steps) -> torch.Tensor:
        inputs, assemble = self._plan(x_adv, x_clean, composition, groups)
        outs, k = self._run(inputs * draws, steps), len(inputs)
        return sum((self.predict(assemble(outs[d * k : (d + 1) * k])) == y).long() for d in range(draws))

    def correct_draws(
        self,
        x_adv: torch.Tensor,
        y: torch.Tensor,
        draws: int = 1,
        composition: str = "batch",
        x_clean: Optional[torch.Tensor] = None,
        groups: int = 8,
        steps: Optional[int] = None,
        stop_after_wrong: bool = False,
    ) -> torch.Tensor:
        """Per example, how many of ``draws`` independent reversals classify ``x_adv`` correctly.

        ``steps``: the reversal with that many steps. ``stop_after_wrong``: an example wrong on the first
        draw is not drawn again (its count is 0: decided for the all-draws score); the others are
        reversed ``draws - 1`` more times as a batch of their own, in the same ``composition``."""
        if not self.has("reverse"):
            raise ValueError("no reversal to score 'with'")
        if len(x_adv) < 2:
            raise ValueError("the reversal needs batches of at least 2 images")
        if composition == "clean_mates" and x_clean is None:
            raise ValueError("composition clean_mates needs the clean batch (x_clean)")
        first = draws if not stop_after_wrong else 1
        counts = torch.zeros(len(x_adv), dtype=torch.long, device=y.device)
        counts += self._count(x_adv, y, first, composition, x_clean, groups, steps)
        alive = (counts == 1).nonzero().flatten()
        if first == draws or len(alive) == 0:
            return counts
        keep = alive
        if len(alive) == 1:  # a single survivor is reversed beside a decided batch-mate (it needs a negative)
            keep = torch.cat([alive, (counts == 0).nonzero().flatten()[:1]])
        at = keep.to(x_adv.device)
        xc = None if x_clean is None else x_clean[at]
        counts[alive] += self._count(x_adv[at], y[keep], draws - 1, composition, xc, groups, steps)[: len(alive)]
        return counts
