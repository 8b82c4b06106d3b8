"""The defended model as the evaluation scores it: several draws, and several batch compositions.

The reversal is randomized (random views) and batch-dependent (InfoNCE negatives are the other
images of the batch). :meth:`Defense.correct_draws` therefore reverses an input ``draws`` times
with independent randomness and counts, per example, the draws that classify it correctly; an
example is robust only if every draw is correct. ``composition`` chooses the batch-mates of the
reversal: the attacked batch as it is (``batch``), each attacked image among clean batch-mates
(``clean_mates``), or the reversal on small batches (``batch2``, ``batch16``).

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
        surrogate_fn: Optional[Fn] = None,
    ) -> None:
        self.model_fn, self.reverse_fn, self.ssl_fn = model_fn, reverse_fn, ssl_fn
        self.reverse_diff_fn, self.reverse_steps_fn, self.surrogate_fn = reverse_diff_fn, reverse_steps_fn, surrogate_fn

    @classmethod
    def from_fns(cls, fns, surrogate_fn: Optional[Fn] = None) -> "Defense":
        """From a :class:`~lightning_modules.attacks.adaptive.ReversalFns`."""
        d = cls(
            fns.model_fn,
            fns.reverse,
            fns.ssl,
            reverse_diff_fn=fns.reverse_diff,
            reverse_steps_fn=fns.reverse_steps,
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

    def _reversed(
        self, x_adv: torch.Tensor, x_clean: torch.Tensor, composition: str, groups: int, rev: Fn
    ) -> torch.Tensor:
        if composition == "batch":
            return rev(x_adv)
        if composition.startswith("batch"):
            return torch.cat([rev(x_adv[s:e]) for s, e in chunks(len(x_adv), int(composition[5:]))])
        if composition == "clean_mates":
            out = torch.empty_like(x_adv)
            pos = torch.arange(len(x_adv), device=x_adv.device)
            for g in range(min(groups, len(x_adv))):
                mine = pos % groups == g
                mixed = torch.where(mine.view(-1, *[1] * (x_adv.ndim - 1)), x_adv, x_clean)
                out[mine] = rev(mixed)[mine]
            return out
        raise ValueError(f"unknown composition '{composition}'")

    def correct_draws(
        self,
        x_adv: torch.Tensor,
        y: torch.Tensor,
        draws: int = 1,
        composition: str = "batch",
        x_clean: Optional[torch.Tensor] = None,
        groups: int = 8,
        reverse_fn: Optional[Fn] = None,
    ) -> torch.Tensor:
        """Per example, how many of ``draws`` independent reversals classify ``x_adv`` correctly."""
        rev = reverse_fn or self.reverse_fn
        if rev is None:
            raise ValueError("no reversal to score 'with'")
        if len(x_adv) < 2:
            raise ValueError("the reversal needs batches of at least 2 images")
        if composition == "clean_mates" and x_clean is None:
            raise ValueError("composition clean_mates needs the clean batch (x_clean)")
        counts = torch.zeros(len(x_adv), dtype=torch.long, device=y.device)
        for _ in range(draws):
            xr = self._reversed(x_adv, x_clean, composition, groups, rev)
            counts += (self.predict(xr) == y).long()
        return counts


__all__ = ["Defense"]
