"""SimCLR views: ``n_views`` randomly augmented copies of a batch, differentiable w.r.t. the input.

One module per backend of the ``views`` setting (``ssl.views``, ``ReversalConfig.views``):

- :mod:`.kornia` — ``kornia``: :class:`SimCLRViews`, kornia's augmentation modules, per image (the reference);
- :mod:`.fast` — ``fast``: :class:`FastSimCLRViews`, the same distribution as a few batched tensor ops,
  and :func:`make_views`, which builds either by name (:data:`VIEW_BACKENDS`).

Nothing here imports Lightning.
"""

from .fast import VIEW_BACKENDS, FastSimCLRViews, make_views, resize_matrix
from .kornia import SimCLRViews

__all__ = ["SimCLRViews", "FastSimCLRViews", "VIEW_BACKENDS", "make_views", "resize_matrix"]
