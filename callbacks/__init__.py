"""Lightning callbacks: atomic checkpoints, reversal image grids, prediction files."""

from .checkpoint import AtomicCheckpoint
from .images import ImageGrid, reversal_grid
from .predictions import PredictionWriter, merge_predictions

__all__ = ["AtomicCheckpoint", "ImageGrid", "reversal_grid", "PredictionWriter", "merge_predictions"]

from .corruption_report import CorruptionReport  # noqa: E402  (issue 5: per-corruption accuracy tables)

__all__ += ["CorruptionReport"]

from .robust_eval import RobustEvaluation  # noqa: E402  (issue 3: robust evaluation with adaptive attacks)

__all__ += ["RobustEvaluation"]

from .ema import DeviceEMA  # noqa: E402  (issue 4: EMA of the weights without host syncs)

__all__ += ["DeviceEMA"]

from .smoothing_report import SmoothingCertification  # noqa: E402

__all__ += ["SmoothingCertification"]

from .reversal_picture import ReversalPicture, reversal_figure  # noqa: E402

__all__ += ["ReversalPicture", "reversal_figure"]
