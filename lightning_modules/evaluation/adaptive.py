"""Attacks that know the defense is there (Croce et al., ICML 2022), on a defended classifier
``x -> f(reverse(x))``; the evaluation reports each as its own row and the worst case over all of them.

1. :func:`defense_aware` (Mao et al. 2021, Sec. 5.4): maximize ``CE(f(x), y) - lambda_s * L_ssl(x)``
   so the adversarial example already has a low contrastive loss and the reversal has little to undo.
2. :func:`bpda_eot`: BPDA (Athalye et al. 2018), the reversal straight-through on the backward pass,
   ``x + (reverse(x) - x).detach()``, the gradient averaged over ``eot`` fresh draws (EOT).
3. :func:`full_gradient`: back-propagate through the unrolled reversal
   (:func:`~lightning_modules.defense.reversal.reverse_differentiable`), with EOT.
4. :func:`transfer`: PGD crafted on a surrogate, by default the undefended classifier.
5. :func:`apgd_eot`: pyautoattack's APGD averaging ``eot`` gradients of a :class:`StandIn` per step,
   and :func:`square`, gradient-free on the real randomized defense.

A :class:`StandIn` is a module whose forward pass *is* the real defense (one fresh random draw per
call) and whose backward pass is the identity through the reversal (``bpda``) or back-propagation
through the unrolled reversal (``full``); its ``observe`` hook feeds
:class:`~lightning_modules.evaluation.best_iterate.BestIterate`.

Example:
    >>> import torch
    >>> from lightning_modules.defense import DefendedModel, ReversalConfig
    >>> from lightning_modules.evaluation.adaptive import bpda_eot
    >>> from lightning_modules.nn.backbones import build_backbone
    >>> from lightning_modules.nn.heads import ContrastiveHead
    >>> net, head = build_backbone("small_cnn", width=8).eval(), ContrastiveHead(32, 64, 16).eval()
    >>> d = DefendedModel(net, head, ReversalConfig(steps=2))
    >>> x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    >>> x_adv = bpda_eot(d.model_fn, d.reverse, x, y, eps=8 / 255, alpha=2 / 255, steps=2, eot=2)
    >>> bool((x_adv - x).abs().max() <= 8 / 255 + 1e-6)
    True
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

import torch
import torch.nn as nn

from ..attacks.core import LOSSES, check_batch, check_eps, logits_of, pgd, projected_gradient
from ..defense.model import chunks

Fn = Callable[[torch.Tensor], torch.Tensor]
Observer = Callable[[torch.Tensor, torch.Tensor], None]


class StandIn(nn.Module):
    """``x -> logits`` whose forward pass is the real defense and whose backward pass is a surrogate.

    Args:
        model_fn: the classifier (logits).
        reverse_fn: the reversal as deployed (one random draw per call), for ``mode="bpda"``.
        reverse_diff_fn: the unrolled, differentiable reversal ``x -> x_rev``, for ``mode="full"``.
        mode: ``bpda`` (identity through the reversal) or ``full`` (through the unrolled steps).
        observe: called with ``(x, logits)`` after every forward pass (e.g. :meth:`BestIterate.observe`).
    """

    def __init__(
        self,
        model_fn: Fn,
        reverse_fn: Optional[Fn] = None,
        reverse_diff_fn: Optional[Fn] = None,
        mode: str = "bpda",
        observe: Optional[Callable[[torch.Tensor, torch.Tensor], None]] = None,
    ) -> None:
        super().__init__()
        if mode not in ("bpda", "full"):
            raise ValueError(f"unknown stand-in '{mode}'; choose bpda or full")
        if (mode == "bpda" and reverse_fn is None) or (mode == "full" and reverse_diff_fn is None):
            raise ValueError(f"the {mode} stand-in needs {'reverse_fn' if mode == 'bpda' else 'reverse_diff_fn'}")
        self.model_fn, self.reverse_fn, self.reverse_diff_fn = model_fn, reverse_fn, reverse_diff_fn
        self.mode, self.observe = mode, observe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            if self.mode == "bpda":
                xr = x + (self.reverse_fn(x.detach()) - x).detach()
            else:
                xr = self.reverse_diff_fn(x)
            z = logits_of(self.model_fn, xr).float()
        if self.observe is not None:
            self.observe(x.detach(), z.detach())
        return z


def apgd_eot(
    stand_in: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: str = "Linf",
    steps: int = 100,
    eot: int = 20,
    loss: str = "ce",
    n_targets: int = 3,
    seed: int = 0,
) -> list[torch.Tensor]:
    """pyautoattack's APGD-CE (``loss="ce"``) or targeted APGD-DLR (``loss="dlr-t"``, ``n_targets``
    target classes: the stand-in's top non-true classes on ``x``) with ``eot`` gradients per step, on
    the whole batch at once (so every row of the batch stays the same example: the stand-in's
    observer sees the whole batch every call). Returns APGD's own candidates of every run (its
    highest-loss point and its first point the stand-in misclassified), to judge beside what the
    observer kept."""
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    norm = check_batch(x, y, eps, norm)
    log = logging.getLogger("auto-attack")
    x, y = x.detach().float(), y.detach()
    common = dict(n_iter=steps, norm=norm, n_restarts=1, eps=float(eps), seed=seed, eot_iter=eot, rho=0.75)
    common.update(device=x.device, logger=log)
    if loss == "ce":
        attack = APGDAttack(stand_in, loss="ce", **common)
        targets = [None]
    elif loss == "dlr-t":
        attack = APGDAttack_targeted(stand_in, n_target_classes=n_targets, **common)
        with torch.no_grad():
            z = stand_in(x)
        if z.shape[1] < 4:
            raise ValueError(f"targeted APGD-DLR needs at least 4 classes, the model has {z.shape[1]}")
        order = z.sort(dim=1)[1]
        targets = [order[:, -k] for k in range(2, min(n_targets, z.shape[1] - 1) + 2)]
    else:
        raise ValueError(f"unknown APGD loss '{loss}'; choose ce or dlr-t")
    attack.init_hyperparam(x)
    torch.manual_seed(seed)
    out = []
    with torch.enable_grad():
        for t in targets:
            attack.y_target = t
            x_best, _, _, x_best_adv = attack.attack_single_run(x, y)
            out += [x_best.detach(), x_best_adv.detach()]
    return out


def square(
    defended: Fn, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "Linf", queries: int = 1000, seed: int = 0
) -> torch.Tensor:
    """pyautoattack's Square attack (margin loss, ``queries`` queries) on the real randomized defense."""
    from pyautoattack.square import SquareAttack

    norm = check_batch(x, y, eps, norm)

    def predict(xa: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(xa.device.type, enabled=False):
            return logits_of(defended, xa.float()).float()

    kw = dict(p_init=0.8, n_restarts=1, seed=seed, verbose=False, device=x.device, resc_schedule=False)
    attack = SquareAttack(predict, norm=norm, n_queries=queries, eps=float(eps), **kw)
    with torch.no_grad():
        return attack.perturb(x.detach().float(), y.detach()).detach()


def _loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if name not in LOSSES:
        raise ValueError(f"unknown attack loss '{name}'; choose one of {sorted(LOSSES)}")
    return LOSSES[name]


def _with_restarts(
    run: Callable[[], torch.Tensor], x: torch.Tensor, y: torch.Tensor, restarts: int, defended: Optional[Fn]
) -> torch.Tensor:
    best, fooled = None, None
    for _ in range(max(1, restarts)):
        xa = run()
        if defended is None or restarts <= 1:
            if best is None:
                best = xa
            continue
        with torch.no_grad():
            f_ = logits_of(defended, xa).argmax(1) != y
        if best is None:
            best, fooled = xa, f_
            continue
        take = f_ & ~fooled
        best = torch.where(take.view(-1, *[1] * (x.ndim - 1)), xa, best)
        fooled = fooled | f_
    return best


def defense_aware(
    model_fn: Fn,
    ssl_fn: Fn,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
    norm: str = "Linf",
    lam: float = 1.0,
    restarts: int = 1,
    loss: str = "ce",
    defended: Optional[Fn] = None,
    on_step: Optional[Callable[[int, torch.Tensor], None]] = None,
) -> torch.Tensor:
    """Mao et al.'s defense-aware attack: PGD ascending ``loss(f(x), y) - lam * ssl_fn(x)``;
    ``on_step(k, x_k)`` sees every iterate (its forward pass never runs the reversal)."""
    check_eps(eps, norm)
    lf = _loss(loss)

    def objective(xa: torch.Tensor) -> torch.Tensor:
        return lf(logits_of(model_fn, xa), y) - lam * ssl_fn(xa)

    return _with_restarts(
        lambda: projected_gradient(objective, x, eps, alpha, steps, norm, on_step=on_step), x, y, restarts, defended
    )


def bpda_eot(
    model_fn: Fn,
    reverse_fn: Fn,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
    norm: str = "Linf",
    eot: int = 4,
    restarts: int = 1,
    loss: str = "ce",
    defended: Optional[Fn] = None,
    observe: Optional[Observer] = None,
) -> torch.Tensor:
    """PGD on ``loss(f(reverse(x)), y)`` with the reversal straight-through, the gradient averaged over
    ``eot`` independent reversals (fresh random views each). ``observe(x, logits)`` sees every
    defended draw (:class:`~lightning_modules.evaluation.best_iterate.BestIterate`)."""
    check_eps(eps, norm)
    lf, net = _loss(loss), StandIn(model_fn, reverse_fn, mode="bpda", observe=observe)

    def objective(xa: torch.Tensor) -> torch.Tensor:
        return sum(lf(net(xa), y) for _ in range(max(1, eot))) / max(1, eot)

    return _with_restarts(lambda: projected_gradient(objective, x, eps, alpha, steps, norm), x, y, restarts, defended)


def full_gradient(
    model_fn: Fn,
    reverse_diff_fn: Fn,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
    norm: str = "Linf",
    eot: int = 1,
    restarts: int = 1,
    loss: str = "ce",
    batch_size: Optional[int] = None,
    defended: Optional[Fn] = None,
    observe: Optional[Observer] = None,
) -> torch.Tensor:
    """PGD on ``loss(f(reverse_diff_fn(x)), y)``, back-propagating through the unrolled reversal,
    averaged over ``eot`` draws. ``batch_size`` attacks the batch in chunks to save memory (the
    attacker's reversal then sees only the chunk as negatives; the defense is evaluated as deployed).
    ``observe(x, logits)`` sees every draw (the unrolled forward pass is the exact reversal)."""
    check_eps(eps, norm)
    lf = _loss(loss)
    net = StandIn(model_fn, reverse_diff_fn=reverse_diff_fn, mode="full", observe=observe)

    def run_chunk(xc: torch.Tensor, yc: torch.Tensor) -> torch.Tensor:
        def objective(xa: torch.Tensor) -> torch.Tensor:
            return sum(lf(net(xa), yc) for _ in range(max(1, eot))) / max(1, eot)

        return projected_gradient(objective, xc, eps, alpha, steps, norm)

    def run() -> torch.Tensor:
        if batch_size is None or batch_size >= len(x):
            return run_chunk(x, y)
        return torch.cat([run_chunk(x[s:e], y[s:e]) for s, e in chunks(len(x), batch_size)])

    return _with_restarts(run, x, y, restarts, defended)


def transfer(
    surrogate_fn: Fn,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
    norm: str = "Linf",
    restarts: int = 1,
    loss: str = "ce",
) -> torch.Tensor:
    """PGD crafted on ``surrogate_fn`` (default in the evaluation: the undefended classifier)."""
    return pgd(surrogate_fn, x, y, eps, alpha, steps, norm, loss=loss, restarts=restarts)
