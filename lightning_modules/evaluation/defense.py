"""The defended model as the evaluation scores it: several draws, and several batch compositions.

The reversal is randomized (random views) and batch-dependent (InfoNCE negatives are the other
images of the batch). :meth:`Defense.correct_draws` therefore reverses an input ``draws`` times
with independent randomness and counts, per example, the draws that classify it correctly; an
example is robust only if every draw is correct. ``composition`` chooses the batch-mates of the
reversal: the attacked batch as it is (``batch``), each attacked image among clean batch-mates
(``clean_mates``), or the reversal on small batches (``batch2``, ``batch16``).

With ``reverse_groups_fn`` (built :meth:`Defense.from_fns`), the reversals of all draws (and of
all blocks of a composition) of a batch run in one call: the batch repeated ``draws`` times, each
copy contrasting only with itself (the same distribution as separate calls; fewer, larger kernels).
``stop_after_wrong`` scores the all-draws rule the cheap way: after the first draw only the
examples it classified correctly are reversed again (among themselves, in the same composition: a
smaller batch).

Example:
    >>> import torch
    >>> from lightning_modules.evaluation.defense import Defense
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    >>> d = Defense(net, reverse_fn=lambda x: x)  # a deterministic "reversal"
    >>> x, y = torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])
    >>> counts = d.correct_draws(x, y, draws=3)
    >>> bool(((counts == 0) | (counts == 3)).all())
    True
"""

from __future__ import annotations

import copy
from typing import Callable, Optional

import torch

from ..attacks.core import logits_of
from ..attacks.defense_attacks import chunks

Fn = Callable[[torch.Tensor], torch.Tensor]


class Defense:
    """The callables of a defended model (see :class:`~lightning_modules.attacks.adaptive.ReversalFns`).

    Args:
        model_fn: images in ``[0, 1]`` -> logits (the undefended classifier, eval mode).
        reverse_fn: the reversal (None: an undefended model, no "with" columns, no attacks on it).
        ssl_fn: per-image contrastive loss (defense-aware attack).
        reverse_diff_fn: ``(x, steps, smooth, use_checkpoint) -> x_rev``, differentiable in ``x``.
        reverse_steps_fn: ``(x, steps) -> x_rev`` (reversal-steps sweep).
        reverse_groups_fn: ``(x, groups, steps) -> x_rev``: ``groups`` contiguous equal batches of ``x``
            reversed independently in one call (``steps`` None: the reversal's own).
        surrogate_fn: an independent model's logits (transfer attack); None: no transfer row.
    """

    def __init__(
        self,
        model_fn: Fn,
        reverse_fn: Optional[Fn] = None,
        ssl_fn: Optional[Fn] = None,
        *,
        reverse_diff_fn: Optional[Callable] = None,
        reverse_steps_fn: Optional[Callable] = None,
        reverse_groups_fn: Optional[Callable] = None,
        surrogate_fn: Optional[Fn] = None,
    ) -> None:
        self.model_fn, self.reverse_fn, self.ssl_fn = model_fn, reverse_fn, ssl_fn
        self.reverse_diff_fn, self.reverse_steps_fn, self.surrogate_fn = reverse_diff_fn, reverse_steps_fn, surrogate_fn
        self.reverse_groups_fn = reverse_groups_fn

    @classmethod
    def from_fns(cls, fns, surrogate_fn: Optional[Fn] = None) -> "Defense":
        """From a :class:`~lightning_modules.attacks.adaptive.ReversalFns`."""
        d = cls(
            fns.model_fn,
            fns.reverse,
            fns.ssl,
            reverse_diff_fn=fns.reverse_diff,
            reverse_steps_fn=fns.reverse_steps,
            reverse_groups_fn=fns.reverse_groups,
            surrogate_fn=surrogate_fn,
        )
        d.fns, d._per_threat = fns, {}
        return d

    def for_threat(self, norm: str, eps: float) -> "Defense":
        """This defense with its reversal's budget set for an attack of ``eps`` in ``norm``
        (:meth:`~lightning_modules.reversal.ReversalConfig.for_threat`); itself when that changes
        nothing or when it was not built :meth:`from_fns`."""
        fns = getattr(self, "fns", None)
        if fns is None:
            return self
        key = (str(norm), float(eps))
        if key not in self._per_threat:
            f = fns.for_threat(norm, eps)
            self._per_threat[key] = self if f is fns else Defense.from_fns(f, self.surrogate_fn)
        return self._per_threat[key]

    def one_call_per_draw(self) -> "Defense":
        """This defense reversing one draw per call (no ``reverse_groups_fn``)."""
        if self.reverse_groups_fn is None:
            return self
        if not hasattr(self, "_one_call"):
            self._one_call = copy.copy(self)
            self._one_call.reverse_groups_fn = None
        return self._one_call

    def has(self, need: str) -> bool:
        return getattr(self, need) is not None

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return logits_of(self.model_fn, x).argmax(1)

    def reverse(
        self, x: torch.Tensor, reverse_fn: Optional[Fn] = None, mates: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """The reversal of ``x``; a single image is reversed beside ``mates[0]`` (it needs a negative)."""
        rev = reverse_fn or self.reverse_fn
        if len(x) >= 2:
            return rev(x)
        pad = mates[:1] if mates is not None and len(mates) else x
        return rev(torch.cat([x, pad]))[:1]

    def defended_logits(
        self, x: torch.Tensor, reverse_fn: Optional[Fn] = None, mates: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Logits of the defended model: one random draw of the reversal, then the classifier."""
        return logits_of(self.model_fn, self.reverse(x, reverse_fn, mates))

    def _plan(
        self, x_adv: torch.Tensor, x_clean: Optional[torch.Tensor], composition: str, groups: int
    ) -> tuple[list[torch.Tensor], Callable[[list[torch.Tensor]], torch.Tensor]]:
        """The reversal inputs one draw of ``composition`` needs, and how their outputs make the batch."""
        if composition == "batch":
            return [x_adv], lambda outs: outs[0]
        if composition.startswith("batch"):
            return [x_adv[s:e] for s, e in chunks(len(x_adv), int(composition[5:]))], torch.cat
        if composition == "clean_mates":
            pos = torch.arange(len(x_adv), device=x_adv.device)
            mine = [pos % groups == g for g in range(min(groups, len(x_adv)))]
            shape = (-1, *[1] * (x_adv.ndim - 1))
            inputs = [torch.where(m.view(shape), x_adv, x_clean) for m in mine]

            def assemble(outs: list[torch.Tensor]) -> torch.Tensor:
                out = torch.empty_like(x_adv)
                for m, o in zip(mine, outs):
                    out[m] = o[m]
                return out

            return inputs, assemble
        raise ValueError(f"unknown composition '{composition}'")

    def _run(self, inputs: list[torch.Tensor], rev: Optional[Fn], steps: Optional[int]) -> list[torch.Tensor]:
        """Reverse every input: one call per input size with ``reverse_groups_fn``, else one call each."""
        if rev is not None or self.reverse_groups_fn is None:
            rev = rev or self.reverse_fn
            return [rev(x) for x in inputs]
        outs: list[Optional[torch.Tensor]] = [None] * len(inputs)
        for size in dict.fromkeys(len(x) for x in inputs):
            at = [i for i, x in enumerate(inputs) if len(x) == size]
            xr = self.reverse_groups_fn(torch.cat([inputs[i] for i in at]), len(at), steps)
            for i, o in zip(at, xr.split(size)):
                outs[i] = o
        return outs

    def correct_draws(
        self,
        x_adv: torch.Tensor,
        y: torch.Tensor,
        draws: int = 1,
        composition: str = "batch",
        x_clean: Optional[torch.Tensor] = None,
        groups: int = 8,
        reverse_fn: Optional[Fn] = None,
        steps: Optional[int] = None,
        stop_after_wrong: bool = False,
    ) -> torch.Tensor:
        """Per example, how many of ``draws`` independent reversals classify ``x_adv`` correctly.

        ``steps``: the reversal with that many steps (needs ``reverse_steps_fn`` or ``reverse_groups_fn``);
        ``reverse_fn``: another reversal, one call per draw. ``stop_after_wrong``: an example wrong on
        the first draw is not drawn again (its count is 0: decided for the all-draws score); the others
        are reversed ``draws - 1`` more times as a batch of their own, in the same ``composition``."""
        if reverse_fn is None and steps is not None and self.reverse_groups_fn is None:
            reverse_fn = lambda xa: self.reverse_steps_fn(xa, steps)  # noqa: E731
        if reverse_fn is None and self.reverse_fn is None:
            raise ValueError("no reversal to score 'with'")
        if len(x_adv) < 2:
            raise ValueError("the reversal needs batches of at least 2 images")
        if composition == "clean_mates" and x_clean is None:
            raise ValueError("composition clean_mates needs the clean batch (x_clean)")
        first = draws if not stop_after_wrong else 1
        inputs, assemble = self._plan(x_adv, x_clean, composition, groups)
        outs = self._run(inputs * first, reverse_fn, steps)
        k = len(inputs)
        counts = torch.zeros(len(x_adv), dtype=torch.long, device=y.device)
        for d in range(first):
            counts += (self.predict(assemble(outs[d * k : (d + 1) * k])) == y).long()
        if first == draws:
            return counts
        alive = (counts == 1).nonzero().flatten()
        if len(alive) == 0:
            return counts
        keep = alive
        if len(alive) == 1:  # a single survivor is reversed beside a decided batch-mate (it needs a negative)
            keep = torch.cat([alive, (counts == 0).nonzero().flatten()[:1]])
        at = keep.to(x_adv.device)
        inputs, assemble = self._plan(x_adv[at], None if x_clean is None else x_clean[at], composition, groups)
        outs, k = self._run(inputs * (draws - 1), reverse_fn, steps), len(inputs)
        ya = y[keep]
        for d in range(draws - 1):
            counts[alive] += (self.predict(assemble(outs[d * k : (d + 1) * k])) == ya).long()[: len(alive)]
        return counts


__all__ = ["Defense"]
