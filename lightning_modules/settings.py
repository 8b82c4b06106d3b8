"""Ranges of the module's numeric settings, checked when it is built: a count below 1, a negative
rate or a fraction outside ``[0, 1)`` fails naming the setting instead of training something else
(PGD with ``steps: -3`` would train on the random start)."""

from __future__ import annotations

_RULES = {  # name: (test, what it must be)
    "steps": (lambda v: v >= 1, ">= 1"),
    "predict_attack_steps": (lambda v: v >= 1, ">= 1"),
    "val_attack_steps": (lambda v: v >= 0, ">= 0 (0 turns the validation attack off)"),
    "n_views": (lambda v: v >= 2, ">= 2 (InfoNCE contrasts views of each image)"),
    "head_hidden": (lambda v: v >= 1, ">= 1"),
    "head_dim": (lambda v: v >= 1, ">= 1"),
    "image_size": (lambda v: v >= 1, ">= 1"),
    "num_classes": (lambda v: v >= 2, ">= 2"),
    "alpha": (lambda v: v > 0, "> 0"),
    "temperature": (lambda v: v > 0, "> 0"),
    "lr": (lambda v: v > 0, "> 0"),
    "ssl_weight": (lambda v: v >= 0, ">= 0"),
    "ssl_fraction": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "trades_beta": (lambda v: v >= 0, ">= 0"),
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "warmup": (lambda v: 0 <= v < 1, "in [0, 1) (a fraction of the steps)"),
    "label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
}


def check_settings(**values: float) -> None:
    """Raise naming the first setting outside its range (``steps: -3`` would train on the random start)."""
    for name, value in values.items():
        ok, rule = _RULES[name]
        if not ok(value):
            raise ValueError(f"{name} must be {rule}, got {value}")
