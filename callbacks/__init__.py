"""Lightning callbacks: atomic checkpoints, reversal image grids, prediction files."""
from .checkpoint import AtomicCheckpoint
from .images import ImageGrid, reversal_grid
from .predictions import PredictionWriter, merge_predictions

__all__ = ["AtomicCheckpoint", "ImageGrid", "reversal_grid", "PredictionWriter", "merge_predictions"]
