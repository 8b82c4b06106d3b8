"""Tests write an evaluation's settings by their bare names; :func:`flat_config` puts each in its group."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from lightning_modules.evaluation import EvalConfig
from lightning_modules.evaluation.eval_settings import GROUPS

GROUP_OF = {f.name: g for g, kind in GROUPS.items() for f in fields(kind)}


def flat_config(**settings: Any) -> EvalConfig:
    """``flat_config(steps=2, draws=3)`` is ``EvalConfig(attack={"steps": 2}, scoring={"draws": 3})``."""
    nested: dict[str, Any] = {}
    for k, v in settings.items():
        if k in GROUP_OF:
            nested.setdefault(GROUP_OF[k], {})[k] = v
        else:
            nested[k] = v
    return EvalConfig(**nested)
