"""Randomized smoothing (Cohen, Rosenfeld & Kolter, ICML 2019): CERTIFY and PREDICT, batched.

The smoothed classifier ``g(x) = argmax_c P(f(x + e) = c)``, ``e ~ N(0, sigma^2 I)``, of a base
classifier ``f`` is robust within an L2 ball: if the top class has probability at least ``pA``
then ``g`` does not change within radius ``sigma * Phi^-1(pA)``.

- :func:`certify` — sample ``n0`` noisy copies, guess the top class ``cA``; sample ``n`` more and
  count ``nA``; ``pA_lower`` = one-sided Clopper-Pearson lower bound at level ``alpha``; return
  ``(cA, sigma * Phi^-1(pA_lower))`` when ``pA_lower > 0.5``, else abstain (``-1``, radius 0).
  The certificate holds with probability at least ``1 - alpha`` over the sampling.
- :func:`predict` — ``n`` noisy copies; the top two counts ``nA, nB``; return ``cA`` when a
  two-sided binomial test of ``nA`` out of ``nA + nB`` at ``p = 1/2`` rejects at level
  ``alpha``, else abstain. Wrong with probability at most ``alpha`` (given it answers).

Noisy copies go through the network ``batch_size`` images per forward pass. The Clopper-Pearson bound and
the binomial tail use the regularized incomplete beta function in float64 torch (:func:`betainc`,
:func:`beta_ppf`), so that scipy is not needed at run time (tests compare with it).

**Clamping.** With ``clamp: true`` (the default) the base classifier is ``f(clamp(z, 0, 1))``: the
package's Gaussian-noise training (``noise_std``) clamps the noisy images, and the certificate
holds for whatever deterministic ``f`` is smoothed. Cohen et al. do not clamp (``clamp: false``).

Example:
    >>> import torch
    >>> from lightning_modules.evaluation.smoothing import SmoothingConfig, certify
    >>> w = torch.tensor([[0.0, 0.0], [1.0, 0.0]])          # class 1 iff x_0 > 0
    >>> f = lambda x: x.flatten(1) @ w.t()
    >>> cfg = SmoothingConfig(sigma=0.5, n0=100, n=2000, alpha=0.001, clamp=False)
    >>> g = torch.Generator().manual_seed(0)
    >>> pred, radius, _ = certify(f, torch.tensor([[1.0, 0.0]]), cfg, num_classes=2, generator=g)
    >>> int(pred[0]), 0.8 < float(radius[0]) < 1.0          # the true distance to the boundary is 1.0
    (1, True)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import torch

from ..attacks.core import logits_of

ABSTAIN = -1
_Generator = Optional[torch.Generator]


@dataclasses.dataclass
class SmoothingConfig:
    """``sigma``: noise std (pixels in ``[0, 1]``); ``n0`` selection and ``n`` estimation samples;
    ``alpha``: failure probability; ``batch_size``: noisy images per forward pass; ``clamp``: see module doc."""

    sigma: float = 0.25
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    batch_size: int = 1000
    clamp: bool = True

    def __post_init__(self) -> None:
        if not self.sigma > 0:
            raise ValueError(f"smoothing sigma must be > 0, got {self.sigma}")
        if self.n0 < 1 or self.n < 1:
            raise ValueError(f"smoothing needs n0 >= 1 and n >= 1 samples, got n0={self.n0}, n={self.n}")
        if self.n0 > self.n:
            raise ValueError(f"smoothing n0={self.n0} (selection samples) must not exceed n={self.n} (estimation)")
        if not 0 < self.alpha < 1:
            raise ValueError(f"smoothing alpha must lie in (0, 1), got {self.alpha}")
        if self.batch_size < 1:
            raise ValueError(f"smoothing batch_size must be >= 1, got {self.batch_size}")


# -- the beta function
def _betacf(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor, iters: int) -> torch.Tensor:
    """Continued fraction of the incomplete beta (modified Lentz), valid for ``x < (a + 1) / (a + b + 2)``."""
    tiny = 1e-300
    c = torch.ones_like(x)
    d = 1 - (a + b) * x / (a + 1)
    d = torch.where(d.abs() < tiny, torch.full_like(d, tiny), d).reciprocal()
    h = d.clone()
    for m in range(1, iters + 1):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1 + num * d
            d = torch.where(d.abs() < tiny, torch.full_like(d, tiny), d).reciprocal()
            c = 1 + num / c
            c = torch.where(c.abs() < tiny, torch.full_like(c, tiny), c)
            delta = c * d
            h = h * delta
        if m % 8 == 0 and bool(((delta - 1).abs() < 1e-14).all()):
            break
    return h


def betainc(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Regularized incomplete beta ``I_x(a, b)`` (float64, elementwise; ``a, b > 0``, ``x`` in ``[0, 1]``)."""
    a, b, x = (torch.as_tensor(v, dtype=torch.float64) for v in (a, b, x))
    a, b, x = torch.broadcast_tensors(a, b, x)
    xc = x.clamp(1e-300, 1 - 1e-16)
    log_front = torch.lgamma(a + b) - torch.lgamma(a) - torch.lgamma(b) + a * torch.log(xc) + b * torch.log1p(-xc)
    swap = x > (a + 1) / (a + b + 2)  # continued fraction converges fast on the other side
    aa, bb, xx = torch.where(swap, b, a), torch.where(swap, a, b), torch.where(swap, 1 - xc, xc)
    iters = int(min(10_000, 50 + 3 * math.sqrt(float(torch.maximum(a, b).max()))))
    frac = torch.exp(log_front) * _betacf(aa, bb, xx, iters) / aa
    out = torch.where(swap, 1 - frac, frac)
    return torch.where(x <= 0, torch.zeros_like(out), torch.where(x >= 1, torch.ones_like(out), out)).clamp(0, 1)


def beta_ppf(q: torch.Tensor, a: torch.Tensor, b: torch.Tensor, iters: int = 100) -> torch.Tensor:
    """Quantile of the Beta(a, b) distribution (float64): Newton steps on :func:`betainc`, kept inside a
    bisection bracket, from the normal approximation."""
    q, a, b = (torch.as_tensor(v, dtype=torch.float64) for v in (q, a, b))
    q, a, b = torch.broadcast_tensors(q, a, b)
    lo, hi = torch.zeros_like(q), torch.ones_like(q)
    mean, var = a / (a + b), a * b / ((a + b) ** 2 * (a + b + 1))
    x = (mean + torch.special.ndtri(q) * var.sqrt()).clamp(1e-12, 1 - 1e-12)
    log_norm = torch.lgamma(a + b) - torch.lgamma(a) - torch.lgamma(b)
    for _ in range(iters):
        cdf = betainc(a, b, x)
        below = cdf < q
        lo, hi = torch.where(below, x, lo), torch.where(below, hi, x)
        pdf = torch.exp(log_norm + (a - 1) * torch.log(x) + (b - 1) * torch.log1p(-x))
        step = (cdf - q) / pdf
        new = x - step
        new = torch.where(torch.isfinite(new) & (new > lo) & (new < hi), new, (lo + hi) / 2)
        done = bool(((new - x).abs() <= 1e-15 * x.abs().clamp_min(1e-300)).all() or ((hi - lo) < 1e-16).all())
        x = new
        if done:
            break
    return x


def clopper_pearson_lower(k: torch.Tensor, n: int, alpha: float) -> torch.Tensor:
    """One-sided ``(1 - alpha)`` lower confidence bound on a binomial proportion, ``k`` successes of ``n``:
    ``Beta(k, n - k + 1).ppf(alpha)``, 0 for ``k = 0`` and ``alpha^(1/n)`` for ``k = n`` (float64)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    k = torch.as_tensor(k, dtype=torch.float64)
    if bool(((k < 0) | (k > n)).any()):
        raise ValueError(f"successes must lie in [0, n={n}], got {k.tolist()}")
    inner = beta_ppf(torch.full_like(k, alpha), k.clamp_min(1), (n - k + 1).clamp_min(1))
    return torch.where(k == 0, torch.zeros_like(k), torch.where(k == n, torch.full_like(k, alpha ** (1 / n)), inner))


def binom_test_two_sided(k: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """p-value of the two-sided binomial test of ``k`` successes out of ``n`` at ``p = 1/2`` (float64)."""
    k, n = (torch.as_tensor(v, dtype=torch.float64) for v in (k, n))
    m = torch.maximum(k, n - k)
    tail = betainc(m.clamp_min(1), (n - m + 1).clamp_min(1), torch.full_like(m, 0.5))  # P(X >= m)
    p = torch.where(2 * m == n, torch.ones_like(tail), 2 * tail)
    return torch.where(n == 0, torch.ones_like(p), p).clamp(max=1.0)


# -- sampling and the two procedures
def sample_counts(
    model: Callable, x: torch.Tensor, num: int, cfg: SmoothingConfig, num_classes: int, generator: _Generator = None
) -> torch.Tensor:
    """Class counts ``(B, num_classes)`` of the base classifier on ``num`` noisy copies of each image."""
    b = x.shape[0]
    counts = torch.zeros(b, num_classes, dtype=torch.long, device=x.device)
    per, done = max(1, cfg.batch_size // max(1, b)), 0
    noise_device = generator.device if generator is not None else x.device
    with torch.no_grad():
        while done < num:
            m = min(per, num - done)
            xs = x.repeat_interleave(m, dim=0)
            noise = torch.randn(xs.shape, generator=generator, dtype=xs.dtype, device=noise_device).to(x.device)
            z = (xs + cfg.sigma * noise).clamp(0, 1) if cfg.clamp else xs + cfg.sigma * noise
            pred = logits_of(model, z).argmax(1).view(b, m)
            counts.scatter_add_(1, pred, torch.ones_like(pred))
            done += m
    return counts


def certify(
    model: Callable, x: torch.Tensor, cfg: SmoothingConfig, num_classes: int, generator: _Generator = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CERTIFY on a batch: ``(prediction or -1, certified L2 radius (0 when abstaining), pA_lower)``."""
    c_a = sample_counts(model, x, cfg.n0, cfg, num_classes, generator).argmax(1)
    counts = sample_counts(model, x, cfg.n, cfg, num_classes, generator)
    n_a = counts.gather(1, c_a[:, None]).squeeze(1)
    p_lower = clopper_pearson_lower(n_a.cpu(), cfg.n, cfg.alpha)
    ok = p_lower > 0.5
    radius = cfg.sigma * torch.special.ndtri(p_lower.clamp(max=1 - 1e-16))
    radius = torch.where(ok, radius, torch.zeros_like(radius)).float().to(x.device)
    pred = torch.where(ok.to(x.device), c_a, torch.full_like(c_a, ABSTAIN))
    return pred, radius, p_lower.float().to(x.device)


def predict(
    model: Callable, x: torch.Tensor, cfg: SmoothingConfig, num_classes: int, generator: _Generator = None
) -> torch.Tensor:
    """PREDICT on a batch (``n`` samples, level ``alpha``): the class, or ``-1`` (abstain)."""
    counts = sample_counts(model, x, cfg.n, cfg, num_classes, generator)
    top2 = counts.topk(min(2, num_classes), dim=1)
    n_a = top2.values[:, 0]
    n_b = top2.values[:, 1] if num_classes > 1 else torch.zeros_like(n_a)
    p = binom_test_two_sided(n_a.cpu(), (n_a + n_b).cpu()).to(x.device)
    return torch.where(p <= cfg.alpha, top2.indices[:, 0], torch.full_like(n_a, ABSTAIN))


def certified_accuracy(pred: torch.Tensor, radius: torch.Tensor, y: torch.Tensor, radii: list[float]) -> dict:
    """Fraction of examples certified correct with radius ``>= r`` (``r = 0``: correct and not abstaining)."""
    return {float(r): float(((pred == y) & (radius >= r)).float().mean()) for r in radii}


__all__ = ["ABSTAIN", "SmoothingConfig", "betainc", "beta_ppf", "clopper_pearson_lower", "binom_test_two_sided"]
__all__ += ["sample_counts", "certify", "predict", "certified_accuracy"]
