"""Adversarial supervised contrastive loss (ASCL; Bui et al. 2021) and its pair selection, as pure functions.

Bui et al. extend SupCon (Khosla et al. 2020) to adversarial training: the **anchors** are adversarial
examples' embeddings, an anchor's **positives** the samples (clean and adversarial) of its class, its
**negatives** those of other classes. Over the pool ``[z_adv; z_clean]`` of ``2B`` normalized embeddings,
with anchor ``i``'s kept positives ``Pos(i)`` and negatives ``Neg(i)`` (never ``i`` itself)::

    loss_i = -1/|Pos(i)| * sum_{p in Pos(i)} log( exp(s_ip / t) / sum_{k in Pos(i) u Neg(i)} exp(s_ik / t) )

with ``s`` the cosine similarity and ``t`` the temperature. Without selection every same-class
sample is a positive and every other-class sample a negative (plain SupCon with adversarial anchors).

**Selection** (:func:`select_pairs`, ``strategy="leaked"``). The paper keeps fewer, better
positives and negatives, chosen by the classifier's predictions. Our reading:

- a positive is kept only when the classifier predicts its label correctly (confused samples would pull
  the anchor towards a wrong region); the anchor's own clean counterpart is always kept (it defines the
  adversarial view, so every anchor keeps a positive);
- a negative is kept only when it *leaks* into the anchor's class (predicted as the anchor's label: the
  hard negatives in the anchor's region); with ``neg_topk > 0`` the ``k`` other-class samples most
  similar to the anchor are kept as well.

Dropped pairs leave both the numerator and the denominator. The paper reports keeping 42.8% of the
positives and 6.3% of the negatives on CIFAR-10; :func:`kept_fractions` measures ours.

Example:
    >>> import torch
    >>> z_adv, z_clean, y = torch.randn(8, 16), torch.randn(8, 16), torch.arange(8) % 3
    >>> float(ascl_loss(z_adv, z_clean, y, temperature=0.1)) > 0
    True
    >>> keep = select_pairs(y, y, y, "leaked")     # every sample predicted right
    >>> int(keep.neg.sum())                         # nothing leaks into another class
    0
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

STRATEGIES = ("none", "leaked")


class PairMasks(NamedTuple):
    """Kept pairs, ``(B, 2B)`` booleans over the pool ``[adversarial; clean]`` (anchor ``i`` = pool row ``i``)."""

    pos: torch.Tensor
    neg: torch.Tensor


def _pool_masks(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All positives and negatives of each anchor over the pool ``[adv; clean]`` (self excluded)."""
    b = y.shape[0]
    y_pool = torch.cat([y, y])
    same = y[:, None] == y_pool[None, :]
    return same & ~torch.eye(b, 2 * b, dtype=torch.bool, device=y.device), ~same


def select_pairs(
    y: torch.Tensor,
    pred_adv: torch.Tensor,
    pred_clean: torch.Tensor,
    strategy: str = "leaked",
    sim: Optional[torch.Tensor] = None,
    neg_topk: int = 0,
) -> PairMasks:
    """Which positives and negatives each adversarial anchor keeps (see the module docstring).

    ``y``: labels ``(B,)``; ``pred_adv`` / ``pred_clean``: the classifier's predicted labels of the
    adversarial and clean samples; ``sim``: ``(B, 2B)`` anchor-pool similarities, needed only for
    ``neg_topk > 0``. ``strategy="none"`` keeps every pair.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown ASCL selection '{strategy}'; choose one of {list(STRATEGIES)}")
    if neg_topk < 0:
        raise ValueError(f"neg_topk must be >= 0, got {neg_topk}")
    pos, neg = _pool_masks(y)
    if strategy == "none":
        return PairMasks(pos, neg)
    b = y.shape[0]
    pred_pool = torch.cat([pred_adv, pred_clean])
    y_pool = torch.cat([y, y])
    correct = (pred_pool == y_pool)[None, :]
    own = torch.zeros_like(pos)
    own[torch.arange(b), torch.arange(b) + b] = True  # the anchor's clean counterpart
    keep_pos = pos & (correct | own)
    keep_neg = neg & (pred_pool[None, :] == y[:, None])
    if neg_topk > 0:
        if sim is None:
            raise ValueError("neg_topk > 0 needs the anchor-pool similarities `sim`")
        k = min(neg_topk, 2 * b)
        masked = sim.detach().masked_fill(~neg, float("-inf"))
        top = torch.zeros_like(neg).scatter_(1, masked.topk(k, dim=1).indices, True)
        keep_neg = keep_neg | (top & neg)
    return PairMasks(keep_pos, keep_neg)


def ascl_loss(
    z_adv: torch.Tensor,
    z_clean: torch.Tensor,
    y: torch.Tensor,
    temperature: float = 0.1,
    keep: Optional[PairMasks] = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Supervised contrastive loss with adversarial anchors over the pool ``[z_adv; z_clean]``.

    ``z_adv``, ``z_clean``: ``(B, d)`` projections (L2-normalized here) of the adversarial and the
    clean images, ``y`` their labels; ``keep``: pairs from :func:`select_pairs` (``None``: all pairs).
    Returns the mean (``"mean"``), sum or per-anchor (``"none"``, shape ``(B,)``) loss.
    """
    if temperature <= 0:
        raise ValueError(f"ASCL temperature must be > 0, got {temperature}")
    if z_adv.shape != z_clean.shape or z_adv.ndim != 2 or y.shape != z_adv.shape[:1]:
        raise ValueError(
            f"ascl_loss needs z_adv, z_clean of one (B, d) shape and B labels, got "
            f"{tuple(z_adv.shape)}, {tuple(z_clean.shape)}, {tuple(y.shape)}"
        )
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"unknown reduction '{reduction}'")
    b = z_adv.shape[0]
    with torch.autocast(z_adv.device.type, enabled=False):  # similarities in fp32, also under bf16-mixed
        pool = F.normalize(torch.cat([z_adv, z_clean]).float(), dim=1)
        logits = pool[:b] @ pool.t() / temperature
    pos, neg = keep if keep is not None else _pool_masks(y)
    allowed = pos | neg
    log_prob = logits - torch.logsumexp(logits.masked_fill(~allowed, float("-inf")), dim=1, keepdim=True)
    n_pos = pos.sum(1)
    per_anchor = -log_prob.masked_fill(~pos, 0.0).sum(1) / n_pos.clamp_min(1)
    per_anchor = per_anchor.masked_fill(n_pos == 0, 0.0)
    if reduction == "none":
        return per_anchor
    if reduction == "sum":
        return per_anchor.sum()
    return per_anchor.sum() / (n_pos > 0).sum().clamp_min(1)


def kept_fractions(keep: PairMasks, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fractions of all positives and of all negatives that ``keep`` retains (as 0-d tensors)."""
    pos, neg = _pool_masks(y)
    return (keep.pos.sum() / pos.sum().clamp_min(1)).float(), (keep.neg.sum() / neg.sum().clamp_min(1)).float()


__all__ = ["STRATEGIES", "PairMasks", "select_pairs", "ascl_loss", "kept_fractions"]
