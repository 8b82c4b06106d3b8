"""The robustness evaluation, read top to bottom along the data flow:

- :mod:`.config` — :class:`EvalConfig`: which rows run (attacks, budgets, draws, compositions, sweeps);
- :mod:`.registry` — one entry per attack (name, kind, threat models, label, identity, craft function);
- :mod:`.defense` — the defended model as scored: several draws, several batch compositions;
- :mod:`.catalog` — every row of an evaluation (attack, settings, columns, examples), keyed by its settings;
- :mod:`.engine` — :class:`RobustEvaluator`: every row on every batch, resumable, stoppable, with progress;
- :mod:`.store` — :class:`ResultStore`: per-example correct-draw counts on disk, with what they belong to;
- :mod:`.summary` and :mod:`.checks` — the worst case per example and the sanity checks (pure functions);
- :mod:`.report` — JSON, Markdown and plots.

``callbacks.RobustEvaluation`` runs it during ``lightning test``; everything here also works
without Lightning (see :class:`RobustEvaluator`'s example).

Beside the evaluation, :mod:`.adversarial_sets` crafts adversarial test sets once against a source
model and stores each in one file (``python -m lightning_modules.evaluation.adversarial_sets``), read
back by :class:`datamodules.adversarial.AdversarialSetDataModule`; it is not imported here. Nor is
:mod:`.smoothing`, the other way of measuring robustness: randomized-smoothing certification (Cohen et al.),
run by ``callbacks.SmoothingCertification``; its ``certify`` and ``predict`` read best qualified.
"""

from ..atomic import atomic_write_text
from ..util import eps_label, parse_eps
from .catalog import Row, build_catalog
from .config import EvalConfig, legacy_hint
from .defense import Defense
from .engine import EvaluationStopped, RobustEvaluator
from .registry import ATTACKS, Attack, Job
from .store import ResultStore
from .summary import summarize

__all__ = [
    "EvalConfig",
    "parse_eps",
    "eps_label",
    "legacy_hint",
    "Defense",
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
