"""Intervals and paired tests for accuracies measured on the same examples.

Pure Python (``math`` only): a Wilson 95% interval for a proportion, Newcombe's
paired-difference interval (method 10, Wilson score based), the exact McNemar
p-value and a one-line power note.

>>> lo, hi = wilson(8, 10)
>>> round(lo, 4), round(hi, 4)
(0.4902, 0.9433)
>>> mcnemar_exact(0, 6)
0.03125
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

Z95 = 1.959963984540054
Z80 = 0.8416212335729143


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes out of ``n``.

    >>> wilson(0, 0)
    (0.0, 1.0)
    >>> [round(x, 4) for x in wilson(0, 10)]
    [0.0, 0.2775]
    """
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class PairedCounts:
    """Counts for two scores on the same examples: ``both``, ``only_a``, ``only_b``, ``neither`` correct."""

    both: int
    only_a: int
    only_b: int
    neither: int

    @property
    def n(self) -> int:
        return self.both + self.only_a + self.only_b + self.neither

    @classmethod
    def from_flags(cls, a: list[bool], b: list[bool]) -> PairedCounts:
        """Count agreement of two per-example correctness lists.

        >>> PairedCounts.from_flags([True, True, False], [True, False, True])
        PairedCounts(both=1, only_a=1, only_b=1, neither=0)
        """
        if len(a) != len(b):
            raise ValueError(f"paired scores need the same examples, got {len(a)} and {len(b)}")
        pairs = Counter(zip(map(bool, a), map(bool, b)))
        return cls(pairs[True, True], pairs[True, False], pairs[False, True], pairs[False, False])


def newcombe_paired(c: PairedCounts, z: float = Z95) -> tuple[float, float, float]:
    """Difference ``p_a - p_b`` and its Newcombe (1998, method 10) interval: ``(diff, lo, hi)``.

    >>> d, lo, hi = newcombe_paired(PairedCounts(36, 12, 2, 0))
    >>> round(d, 4), round(lo, 4), round(hi, 4)
    (0.2, 0.0569, 0.3404)
    """
    n = c.n
    if n == 0:
        return 0.0, -1.0, 1.0
    p1 = (c.both + c.only_a) / n
    p2 = (c.both + c.only_b) / n
    l1, u1 = wilson(c.both + c.only_a, n, z)
    l2, u2 = wilson(c.both + c.only_b, n, z)
    margins = (c.both + c.only_a) * (c.only_b + c.neither) * (c.both + c.only_b) * (c.only_a + c.neither)
    phi = 0.0 if margins == 0 else (c.both * c.neither - c.only_a * c.only_b) / math.sqrt(margins)
    diff = p1 - p2
    dl = (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2
    du = (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2
    return diff, max(-1.0, diff - math.sqrt(max(dl, 0.0))), min(1.0, diff + math.sqrt(max(du, 0.0)))


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value: binomial(discordant, 1/2) on the discordant pairs.

    >>> mcnemar_exact(0, 0)
    1.0
    >>> mcnemar_exact(3, 3)
    1.0
    """
    m = only_a + only_b
    if m == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(m, i) for i in range(k + 1)) / 2.0**m
    return min(1.0, 2.0 * tail)


def min_detectable_difference(c: PairedCounts, z_alpha: float = Z95, z_power: float = Z80) -> float:
    """Smallest paired difference detectable at 5% two-sided, 80% power, from the observed discordance.

    Normal approximation: ``(z_alpha + z_power) * sqrt(discordant / n) / sqrt(n)``; with no
    discordant pair the worst case (half the pairs discordant) is used.

    >>> round(min_detectable_difference(PairedCounts(0, 8, 8, 0)), 4)
    0.7004
    """
    n = c.n
    if n == 0:
        return math.inf
    disc = (c.only_a + c.only_b) / n or 0.5
    return (z_alpha + z_power) * math.sqrt(disc / n)


def paired_gain(c: PairedCounts) -> dict:
    """``a - b`` as the reports store it: the gain, Newcombe's 95% interval, n and McNemar's exact p.

    >>> g = paired_gain(PairedCounts(2, 1, 3, 10))
    >>> round(g["gain"], 4), g["n"], round(g["p_mcnemar"], 3)
    (-0.125, 16, 0.625)
    """
    gain, lo, hi = newcombe_paired(c)
    return {"gain": gain, "lo": lo, "hi": hi, "n": c.n, "p_mcnemar": mcnemar_exact(c.only_a, c.only_b)}


def gain_verdict(c: PairedCounts, alpha: float = 0.05) -> str:
    """One-line verdict on ``a - b`` in points, with interval, McNemar p and a power note.

    >>> head, tail = gain_verdict(PairedCounts(2, 1, 3, 10)).split("): ")
    >>> head
    'gain -12.5 points (95% CI -35.4 to 11.5, McNemar p=0.625, n=16'
    >>> tail
    'not significant at this n; too small to detect a gain of this size (80% power needs >= 35.0 points)'
    """
    diff, lo, hi = newcombe_paired(c)
    p = mcnemar_exact(c.only_a, c.only_b)
    word = "significant" if p < alpha else "not significant"
    mdd = min_detectable_difference(c)
    power = (
        f"n large enough to detect a gain of this size (80% power at >= {100 * mdd:.1f} points)"
        if abs(diff) >= mdd
        else f"too small to detect a gain of this size (80% power needs >= {100 * mdd:.1f} points)"
    )
    return (
        f"gain {100 * diff:+.1f} points (95% CI {100 * lo:.1f} to {100 * hi:.1f}, McNemar p={p:.3g}, "
        f"n={c.n}): {word} at this n; {power}"
    )
