"""The defense: the reversal (Mao et al. 2021) and the model it defends.

- :mod:`.reversal` — the contrastive loss :func:`ssl_loss`, the reversal's step (:func:`reversal_step`),
  :func:`reverse` and its unrolled, differentiable twin :func:`reverse_differentiable` (the same steps,
  gradients kept);
- :mod:`.model` — :class:`DefendedModel`: classifier, head, reversal settings and views in one object,
  used by the LightningModule, the callbacks and the evaluation.

Its settings, :class:`ReversalConfig` and its recipes, are a group of :mod:`lightning_modules.settings`.
Built on :mod:`lightning_modules.attacks.core` (the projections); the evaluation is built on this.
"""

from ..settings import RECIPES, ReversalConfig
from .model import DefendedModel, chunks
from .reversal import grouped_views, reversal_step, reverse, reverse_differentiable, ssl_loss

__all__ = ["RECIPES", "ReversalConfig", "ssl_loss", "grouped_views", "reversal_step", "reverse"]
__all__ += ["reverse_differentiable", "DefendedModel", "chunks"]
