"""Losses as pure functions (solo-learn style): no state, no modules, tested against slow references.

Example:
    >>> import torch
    >>> from lightning_modules.losses import info_nce
    >>> z = torch.randn(2 * 8, 16)          # 2 views of 8 images, view-major
    >>> loss = info_nce(z, n_views=2, temperature=0.2)
    >>> loss.shape
    torch.Size([])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(
    z: torch.Tensor,
    n_views: int,
    temperature: float = 0.2,
    reduction: str = "mean",
    positive: str = "all",
    groups: int = 1,
) -> torch.Tensor:
    """Multi-view InfoNCE (NT-Xent, SimCLR) on embeddings ``z`` of shape ``(n_views * B, d)``.

    Rows are view-major: row ``v * B + i`` is view ``v`` of image ``i``. Embeddings are L2-normalized; for
    every anchor the other ``n_views - 1`` views of the same image are positives and all ``n_views * (B - 1)``
    views of other images are negatives. Each anchor's loss is the mean over its positives of
    ``-log(exp(s_ap / t) / sum_{k != a} exp(s_ak / t))``; with 2 views this is exactly SimCLR's NT-Xent.

    ``positive``: ``"all"`` (the mean over the positives, above) or ``"first"``: the cross-entropy of each
    anchor with its *first* positive as the label (view 0 of the same image, or view 1 for view 0's anchor),
    the other positives staying in the denominator: the form of Mao et al.'s reference code
    (``logits = [positives, negatives]``, label 0). Equal to ``"all"`` at 2 views.

    ``groups``: the ``B`` images are ``groups`` contiguous blocks of ``B / groups`` images that do not see each
    other: an anchor's negatives come from its own block only. ``groups=k`` on a batch repeated ``k`` times
    gives each copy the loss it would have alone (independent draws in one call).

    ``reduction``: ``"mean"`` (scalar), ``"sum"`` or ``"none"`` (per image, averaged over its views, shape
    ``(B,)``). Computed in fp32 whatever the surrounding autocast.

    Example:
        >>> import torch
        >>> z = torch.randn(4 * 6, 8)
        >>> one = info_nce(z.view(4, 6, 8)[:, :3].reshape(12, 8), 4, reduction="none")
        >>> both = info_nce(z, 4, reduction="none", groups=2)
        >>> torch.allclose(both[:3], one)
        True
    """
    if n_views < 2:
        raise ValueError(f"info_nce needs at least 2 views, got {n_views}")
    if z.shape[0] % n_views:
        raise ValueError(f"{z.shape[0]} embeddings do not split into {n_views} views")
    if positive not in ("all", "first"):
        raise ValueError(f"unknown InfoNCE positive '{positive}'; choose 'all' or 'first'")
    n, b = z.shape[0], z.shape[0] // n_views
    if groups < 1 or b % groups or (groups > 1 and b // groups < 2):
        raise ValueError(f"{b} images do not split into {groups} groups of at least 2 (InfoNCE needs negatives)")
    with torch.autocast(z.device.type, enabled=False):  # similarities in fp32, also under bf16-mixed training
        z = F.normalize(z.float(), dim=1)
        logits = z @ z.t() / temperature
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    image, view = torch.arange(n, device=z.device) % b, torch.arange(n, device=z.device) // b
    hidden = eye
    if groups > 1:
        block = image // (b // groups)
        hidden = hidden | (block[:, None] != block[None, :])
    logits = logits.masked_fill(hidden, float("-inf"))
    pos = (image[:, None] == image[None, :]) & ~eye
    if positive == "first":
        first = torch.where(view == 0, 1, 0)
        pos = pos & (view[None, :] == first[:, None])
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    per_anchor = -(log_prob.masked_fill(~pos, 0.0).sum(1)) / pos.sum(1)
    per_image = per_anchor.view(n_views, b).mean(0)
    if reduction not in ("none", "sum", "mean"):
        raise ValueError(f"unknown reduction '{reduction}'")
    return per_image if reduction == "none" else per_image.sum() if reduction == "sum" else per_image.mean()


def trades_kl(logits_adv: torch.Tensor, logits_clean: torch.Tensor) -> torch.Tensor:
    """TRADES robustness term: ``KL(p_clean || p_adv)`` summed over classes, mean over the batch."""
    return F.kl_div(
        F.log_softmax(logits_adv.float(), dim=1), F.softmax(logits_clean.float(), dim=1), reduction="batchmean"
    )


def cw_margin(logits: torch.Tensor, y: torch.Tensor, kappa: float = 50.0) -> torch.Tensor:
    """Carlini-Wagner margin per example: ``max_{j != y} z_j - z_y``, clipped below at ``-kappa``."""
    logits = logits.float()
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return (other - true).clamp(min=-kappa)


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference-of-logits-ratio loss (Croce & Hein 2020), per example; scale-invariant."""
    logits = logits.float()
    srt = logits.sort(dim=1).values
    true = logits.gather(1, y[:, None]).squeeze(1)
    top_is_true = (logits.argmax(1) == y).float()
    second = srt[:, -2] * top_is_true + srt[:, -1] * (1 - top_is_true)
    return -(true - second) / (srt[:, -1] - srt[:, -3] + 1e-12)


def multiview_info_nce(zs: list[torch.Tensor], temperature: float = 0.2, reduction: str = "mean") -> torch.Tensor:
    """InfoNCE over several views given as a list of ``(B, d)`` embeddings (AdvCL / ACL pretraining).

    Every view of image ``i`` is a positive for every other view of ``i`` — e.g. AdvCL's two
    augmented views, the adversarial view and the high-frequency view — and all views of the other
    images are negatives. Equal to :func:`info_nce` on the view-major concatenation.

    Example:
        >>> import torch
        >>> z1, z2, z_adv = torch.randn(3, 8, 16).unbind(0)
        >>> float(multiview_info_nce([z1, z2, z_adv])) > 0
        True
    """
    if len(zs) < 2:
        raise ValueError(f"multiview_info_nce needs at least 2 views, got {len(zs)}")
    shapes = {tuple(z.shape) for z in zs}
    if len(shapes) != 1:
        raise ValueError(f"all views need the same (B, d) shape, got {sorted(shapes)}")
    return info_nce(torch.cat(list(zs)), len(zs), temperature, reduction)
