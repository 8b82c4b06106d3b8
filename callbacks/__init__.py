"""Lightning callbacks: atomic checkpoints, EMA, training progress, image grids and the reversal
picture, prediction files, the accuracy check after training, and the reports (robustness evaluation,
corruptions, randomized-smoothing certification)."""

from .accuracy_check import AccuracyCheck
from .checkpoint import AtomicCheckpoint
from .corruption_report import CorruptionReport
from .ema import DeviceEMA
from .images import ImageGrid, reversal_grid
from .predictions import PredictionWriter, merge_predictions
from .reversal_picture import ReversalPicture, reversal_figure
from .robust_eval import RobustEvaluation
from .smoothing_report import SmoothingCertification
from .train_progress import TrainProgress

__all__ = ["AccuracyCheck", "AtomicCheckpoint", "CorruptionReport", "DeviceEMA", "ImageGrid", "PredictionWriter"]
__all__ += ["ReversalPicture", "RobustEvaluation", "SmoothingCertification", "TrainProgress", "merge_predictions"]
__all__ += ["reversal_figure", "reversal_grid"]
