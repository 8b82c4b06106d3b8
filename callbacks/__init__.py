"""Lightning callbacks: atomic checkpoints, EMA, image grids and the reversal picture, prediction files,
and the reports (robustness evaluation, corruptions, randomized-smoothing certification)."""

from .checkpoint import AtomicCheckpoint
from .corruption_report import CorruptionReport
from .ema import DeviceEMA
from .images import ImageGrid, reversal_grid
from .predictions import PredictionWriter, merge_predictions
from .reversal_picture import ReversalPicture, reversal_figure
from .robust_eval import RobustEvaluation
from .smoothing_report import SmoothingCertification

__all__ = [
    "AtomicCheckpoint",
    "CorruptionReport",
    "DeviceEMA",
    "ImageGrid",
    "PredictionWriter",
    "ReversalPicture",
    "RobustEvaluation",
    "SmoothingCertification",
    "merge_predictions",
    "reversal_figure",
    "reversal_grid",
]
