"""SimCLR views: ``n_views`` randomly augmented copies of a batch, differentiable w.r.t. the input. One
module per backend of the ``views`` setting: ``kornia`` (:class:`SimCLRViews`, the reference) and ``fast``
(:class:`FastSimCLRViews`, the same distribution as a few batched ops); :func:`make_views` builds either."""

from .fast import VIEW_BACKENDS, FastSimCLRViews, make_views, resize_matrix
from .kornia import SimCLRViews

__all__ = ["SimCLRViews", "FastSimCLRViews", "VIEW_BACKENDS", "make_views", "resize_matrix"]
