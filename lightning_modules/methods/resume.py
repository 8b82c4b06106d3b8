"""What a resumed fit needs beyond Lightning's restore.

**Budget.** A checkpoint records the step total its schedule was built for (``schedule_total_steps``, from
``trainer.estimated_stepping_batches``); a resumed fit with another budget gets the schedule rebuilt for the
new total at the checkpoint's step, said in one line (:func:`rebuild_schedule`; the restored one-cycle
schedule would fail past its end). :func:`load_pending_loader_states` keeps the mid-epoch data position.

**Random draws.** Checkpoints store the CPU, CUDA, numpy and Python generators' states (``rng_states``);
:func:`set_rng_states` restores them when training starts, after the sanity check, so a resumed run draws
what an uninterrupted one would. Under DDP every rank gets global rank 0's states.
"""

from __future__ import annotations

import math
import random
import warnings
from typing import Any

import numpy as np
import torch

from ..util import say


def make_optimizer(params: list, o: Any) -> torch.optim.Optimizer:
    """SGD (or Adam) with the settings of ``o`` (an :class:`~lightning_modules.settings.OptimConfig`); no weight decay
    on biases and normalization parameters (``ndim <= 1``)."""
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": o.weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    if getattr(o, "optimizer", "sgd") == "adam":
        return torch.optim.Adam(groups, lr=o.lr)
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0)


def make_scheduler(opt: torch.optim.Optimizer, h: Any, total: int, done: int = 0):
    """The ``h.schedule`` schedule over ``total`` steps, advanced by ``done`` steps (None: constant)."""
    if h.schedule == "constant":
        return None
    for group in opt.param_groups:  # start from the configured rate, not a restored schedule's
        group.pop("initial_lr", None)
        group["lr"] = h.lr
    if h.schedule == "onecycle":
        # torch divides by (warmup * total - 1): nudge that exact case (e.g. 0.2 of 5 steps) off zero
        pct = h.warmup * 1.01 if abs(h.warmup * total - 1) < 1e-9 else h.warmup
        shape = dict(anneal_strategy="linear", div_factor=25, final_div_factor=1e3)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=h.lr, total_steps=total, pct_start=pct, **shape)
    elif h.schedule == "cosine":
        warm = max(1, int(h.warmup * total))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total)))
        )
    else:
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(0.5 * total), int(0.75 * total)], 0.1)
    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": intended here
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(min(done, total - 1) if h.schedule == "onecycle" else done):
            sched.step()
    return sched


def rebuild_schedule(module: Any, saved_total: int, total: int) -> None:
    """Replace the trainer's restored schedulers by ones built for ``total`` steps at the current step."""
    trainer, step = module.trainer, module.trainer.global_step
    for config in trainer.lr_scheduler_configs:
        config.scheduler = make_scheduler(config.scheduler.optimizer, module.optim_cfg, total, done=step)
    lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
    say(
        f"resuming at step {step} with a budget of {total} steps (the checkpoint's {module.optim_cfg.schedule} "
        f"schedule was for {saved_total}): the schedule is rebuilt for {total} steps; learning rate now {lr:.4g}"
    )


def saved_schedule_total(checkpoint: dict) -> int | None:
    """The step budget a checkpoint's schedule was built for (older checkpoints: the one-cycle state's)."""
    if checkpoint.get("schedule_total_steps") is not None:
        return int(checkpoint["schedule_total_steps"])
    for state in checkpoint.get("lr_schedulers") or []:
        if isinstance(state, dict) and state.get("total_steps") is not None:
            return int(state["total_steps"])
    return None


def load_pending_loader_states(trainer: Any) -> None:
    """Give the training loader its checkpointed position (mid-epoch resume) when Lightning has not: Lightning
    2.6 hands it over only when the fit loop sets its data up after the restore, but
    ``trainer.estimated_stepping_batches`` (read by ``configure_optimizers``) sets the data up before, and
    the resumed epoch would start over from its first batch."""
    loop = trainer.fit_loop
    states = getattr(loop, "_combined_loader_states_to_load", None)
    if states and getattr(loop, "_combined_loader", None) is not None:
        loop._combined_loader._load_state_dicts(states)
        loop._combined_loader_states_to_load = []


def get_rng_states() -> dict[str, Any]:
    """The generators' states as tensors and plain numbers (``weights_only``-loadable)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, state, gauss_next = random.getstate()
    numpy = dict(kind=kind, keys=torch.from_numpy(keys.astype(np.int64)), pos=int(pos), has_gauss=int(has_gauss))
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {**numpy, "gauss": float(gauss)},
        "python": {"version": version, "state": list(state), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = states["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


class ResumeHooks:
    """The LightningModule hooks of the above; generators are restored in ``on_train_start``, after the sanity
    check (it draws random views). The module sets ``_schedule_total`` in ``configure_optimizers`` and
    ``_resumed`` in ``on_load_checkpoint`` (:meth:`remember_resume`)."""

    def remember_resume(self, checkpoint: dict[str, Any]) -> None:
        self._resumed = {"total": saved_schedule_total(checkpoint), "rng": checkpoint.get("rng_states")}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if getattr(self, "_schedule_total", None) is not None:
            checkpoint["schedule_total_steps"] = self._schedule_total
        checkpoint["rng_states"] = get_rng_states()

    def on_train_start(self) -> None:
        saved = getattr(self, "_resumed", None)
        if saved is None:
            return
        self._resumed = None
        load_pending_loader_states(self.trainer)
        total, saved_total = getattr(self, "_schedule_total", None), saved.get("total")
        if total is not None and saved_total is not None and total != saved_total and self.trainer.lr_scheduler_configs:
            rebuild_schedule(self, saved_total, total)
        if saved.get("rng") is not None:
            set_rng_states(saved["rng"])
