import math

import pytest

from lightning_modules.evaluation.stats import (
    PairedCounts,
    gain_verdict,
    mcnemar_exact,
    min_detectable_difference,
    newcombe_paired,
    wilson,
)

scipy_stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("k,n", [(0, 10), (1, 16), (4, 16), (8, 16), (16, 16), (59, 100), (600, 1000)])
def test_wilson_matches_scipy(k, n):
    ci = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = wilson(k, n)
    assert lo == pytest.approx(ci.low, abs=1e-9)
    assert hi == pytest.approx(ci.high, abs=1e-9)


def test_wilson_width_near_three_points_at_1000():
    lo, hi = wilson(500, 1000)
    assert 0.029 < (hi - lo) / 2 < 0.032


@pytest.mark.parametrize("b,c", [(0, 0), (0, 6), (1, 5), (3, 3), (7, 2), (20, 9)])
def test_mcnemar_matches_scipy_binomtest(b, c):
    expected = 1.0 if b + c == 0 else scipy_stats.binomtest(min(b, c), b + c, 0.5).pvalue
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12)


def _newcombe_reference(a, b, c, d):
    # Slow manual reference: Newcombe (1998) method 10 written out with scipy's Wilson limits.
    n = a + b + c + d
    p1, p2 = (a + b) / n, (a + c) / n
    ci1 = scipy_stats.binomtest(a + b, n).proportion_ci(method="wilson")
    ci2 = scipy_stats.binomtest(a + c, n).proportion_ci(method="wilson")
    denom = (a + b) * (c + d) * (a + c) * (b + d)
    phi = (a * d - b * c) / math.sqrt(denom) if denom else 0.0
    delta = math.sqrt((p1 - ci1.low) ** 2 - 2 * phi * (p1 - ci1.low) * (ci2.high - p2) + (ci2.high - p2) ** 2)
    eps = math.sqrt((ci1.high - p1) ** 2 - 2 * phi * (ci1.high - p1) * (p2 - ci2.low) + (p2 - ci2.low) ** 2)
    return p1 - p2, p1 - p2 - delta, p1 - p2 + eps


@pytest.mark.parametrize("counts", [(36, 12, 2, 0), (1, 1, 0, 8), (2, 1, 3, 10), (120, 30, 14, 92)])
def test_newcombe_matches_manual_reference(counts):
    got = newcombe_paired(PairedCounts(*counts))
    want = _newcombe_reference(*counts)
    assert got == pytest.approx(want, abs=1e-9)


def test_newcombe_interval_contains_difference_and_narrows_with_n():
    small = newcombe_paired(PairedCounts(4, 3, 1, 8))
    large = newcombe_paired(PairedCounts(40, 30, 10, 80))
    assert small[1] < small[0] < small[2]
    assert large[2] - large[1] < small[2] - small[1]
    assert large[1] > 0 > small[1]


def test_from_flags_counts_pairs():
    c = PairedCounts.from_flags([1, 1, 0, 0, 1], [1, 0, 1, 0, 0])
    assert c == PairedCounts(both=1, only_a=2, only_b=1, neither=1)
    with pytest.raises(ValueError):
        PairedCounts.from_flags([True], [True, False])


def test_verdict_words_follow_the_test():
    assert "not significant" in gain_verdict(PairedCounts(2, 1, 3, 10))
    assert "too small to detect" in gain_verdict(PairedCounts(2, 1, 3, 10))
    big = PairedCounts(300, 80, 20, 600)
    verdict = gain_verdict(big)
    assert verdict.startswith("gain +6.0 points")
    assert ": significant" in verdict
    assert "large enough" in verdict
    assert min_detectable_difference(big) < 0.06
