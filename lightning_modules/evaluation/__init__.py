"""The robustness evaluation, read top to bottom along the data flow:

- :mod:`.config` — :class:`EvalConfig`: which rows run (attacks, budgets, draws, compositions, sweeps);
- :mod:`.registry` — one entry per attack (name, kind, threat models, label, identity, craft function),
  crafted by :mod:`.crafts` with the attacks on the defense of :mod:`.adaptive` and :mod:`.best_iterate`;
- :mod:`.catalog` — every row of an evaluation (attack, settings, columns, examples), keyed by its settings;
- :mod:`.engine` — :class:`RobustEvaluator`: every row on every batch, resumable, stoppable, with progress;
- :mod:`.store` — :class:`ResultStore`: per-example correct-draw counts on disk, with what they belong to;
- :mod:`.summary` and :mod:`.checks` — the worst case per example and the sanity checks (pure functions);
- :mod:`.report` — JSON, Markdown and plots.

``callbacks.RobustEvaluation`` runs it during ``lightning test``; it also works without Lightning on a
:class:`~lightning_modules.defense.model.DefendedModel` (see :class:`RobustEvaluator`'s example).

Not imported here: :mod:`.adversarial_sets` (adversarial test sets crafted once against a source model,
read back by :class:`datamodules.adversarial.AdversarialSetDataModule`) and :mod:`.smoothing`
(randomized-smoothing certification, run by ``callbacks.SmoothingCertification``; read its ``certify``
and ``predict`` qualified).
"""

from ..util import atomic_write_text, eps_label, parse_eps
from .catalog import Row, build_catalog
from .config import EvalConfig
from .engine import EvaluationStopped, RobustEvaluator
from .registry import ATTACKS, Attack, Job
from .store import ResultStore
from .summary import summarize

__all__ = [
    "EvalConfig",
    "parse_eps",
    "eps_label",
    "RobustEvaluator",
    "EvaluationStopped",
    "Row",
    "build_catalog",
    "ATTACKS",
    "Attack",
    "Job",
    "ResultStore",
    "atomic_write_text",
    "summarize",
]
