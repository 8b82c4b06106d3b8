"""Small helpers used across the package: one line to the user, and budgets (``8/255``) read and written.

Example:
    >>> from lightning_modules.util import eps_label, parse_eps
    >>> parse_eps("8/255") == 8 / 255, eps_label(8 / 255), eps_label(0.5, "L2")
    (True, '8/255', '0.5')
"""

from __future__ import annotations

import os
import sys
from fractions import Fraction
from typing import Union

from .attacks.core import ThreatModel


def say(message: str) -> None:
    """One line on stderr from the first process only (rank from the launcher's environment, so it
    works before the Trainer exists); plain ``print`` so no logging setup can swallow it."""
    if (
        os.environ.get("LOCAL_RANK", "0") == "0"
        and os.environ.get("NODE_RANK", "0") == "0"
        and os.environ.get("RANK", "0") == "0"
    ):
        print(message, file=sys.stderr, flush=True)


def parse_eps(value: Union[float, int, str]) -> float:
    """``0.0314``, ``"8/255"`` or ``"0.5"`` -> float (the one parser of budgets in the package)."""
    if isinstance(value, str):
        v = value.strip()
        try:
            if "/" in v:
                num, den = v.split("/", 1)
                return float(num) / float(den)
            return float(v)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"cannot read the budget '{value}': give a number (0.5) or a fraction (8/255)") from None
    return float(value)


def eps_label(eps: float, norm: str = "Linf") -> str:
    """``8/255`` for L-inf budgets that are (close to) multiples of 1/255, else ``0.5``."""
    k = eps * 255
    if ThreatModel(norm) is ThreatModel.Linf and abs(k - round(k)) < 1e-3 and eps > 0:
        return f"{int(round(k))}/255"
    if eps == 0:
        return "0"
    frac = Fraction(eps).limit_denominator(1000)
    return f"{eps:.4g}" if abs(float(frac) - eps) > 1e-9 or frac.denominator == 1 else f"{eps:g}"
