"""The benchmarks of ``experiments/bench.py``: the module and data they run on, a counted training step,
the training benchmarks under a Lightning ``Trainer.fit``, the reversal and pyautoattack's AutoAttack."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
import warnings
from typing import Optional

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from experiments.bench_timing import OpCounter, WindowTimer, summarize, synchronize


def build_module(args: argparse.Namespace, **overrides):
    from lightning_modules import ReversalModule
    from lightning_modules.settings import ReversalConfig

    bf16 = args.precision == "bf16"
    speed = dict(attack_amp=bf16, channels_last=args.channels_last, compile=args.compile)
    speed.update(compile_mode=args.compile_mode, train_progress_bar=args.progress_bar_metrics)
    kw = dict(backbone=args.backbone, attack=dict(mode="pgd", steps=args.steps), ssl=dict(weight=0.0, views=args.views))
    kw.update(optim=dict(lr=0.1, schedule="onecycle"), inference=dict(val_attack_steps=0), speed=speed)
    kw["backbone_kwargs"] = {"width": 8} if args.backbone == "small_cnn" and args.tiny else None
    kw["reversal"] = ReversalConfig(steps=args.rev_steps, n_views=args.rev_views, views=args.views, amp=bf16)
    for key, value in overrides.items():  # a field of a settings group, or a top-level argument
        group = next((g for g in ("attack", "ssl", "speed") if key in kw.get(g, {})), None)
        (kw if group is None else kw[group])[key] = value
    m = ReversalModule(**kw)
    if args.checkpoint:
        m.load_backbone(args.checkpoint)
    return m


def datamodule(args: argparse.Namespace):
    from datamodules.base import ArrayDataModule

    if args.data_dir:
        from datamodules.cifar import CIFAR10DataModule

        return CIFAR10DataModule(data_dir=args.data_dir, batch_size=args.batch_size, n_examples=None, seed=args.seed)

    class SyntheticData(ArrayDataModule):
        """Random uint8 images (throughput does not depend on the pixels)."""

        def load_split(self, split: str):
            n = args.n_train if split == "train" else max(args.rev_batch_size, args.aa_n)
            g = np.random.default_rng(args.seed + (split == "test"))
            return g.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), g.integers(0, 10, n)

    return SyntheticData(batch_size=args.batch_size, seed=args.seed)


def test_images(args: argparse.Namespace, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = datamodule(args).load_split("test")
    x, y = torch.as_tensor(np.asarray(x))[:n], torch.as_tensor(np.asarray(y)).long()[:n]
    if len(x) < n:
        reps = -(-n // len(x))
        x, y = x.repeat(reps, 1, 1, 1)[:n], y.repeat(reps)[:n]
    return x.to(device).float().div_(255), y.to(device)


def count_step(module, batch, device: torch.device) -> dict:
    """One eager training step (forward + backward) under the FLOP and op counters."""
    import lightning.pytorch as pl  # noqa: F401

    module.train()
    counter = OpCounter(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=module.speed_cfg.attack_amp)
        with FlopCounterMode(display=False) as fc, counter, amp:
            loss = module.training_step(batch, 0)
            loss.backward()
    module.zero_grad(set_to_none=True)
    return {
        "executed_flops_per_image": fc.get_total_flops() / batch[0].shape[0],
        "aten_ops_per_step": counter.ops,
        "host_syncs_in_step": dict(counter.syncs),
    }


def bench_train(bench: str, args: argparse.Namespace, device: torch.device) -> dict:
    import lightning.pytorch as pl

    training = {"pgd_at": "pgd", "pgd_at_ssl": "pgd", "fgsm_rs": "fgsm_rs", "trades": "trades"}[bench]
    ssl = args.ssl_weight if bench == "pgd_at_ssl" else 0.0
    # the counts: an eager copy (compile off), one step on a real batch from the loader
    dm = datamodule(args)
    dm.setup("fit")
    loader = dm._loader("train", train=True)
    loader.device = device
    batch = next(iter(loader))
    eager = build_module(args, mode=training, weight=ssl, compile=False).to(device)
    if args.channels_last:
        eager.classifier.to(memory_format=torch.channels_last)
    counts = count_step(eager, batch, device)
    del eager

    timer = WindowTimer(device, args.seconds, args.windows, args.warmup)

    class Timing(pl.Callback):
        """Eager runs: iteration 1 (batch end to batch end: data, step, hooks, logging) is counted, then
        the timer starts; compiled runs go straight to the timer (a dispatch mode would upset dynamo)."""

        lightning_syncs: Optional[dict] = None
        counter = OpCounter(device)
        iteration = 0 if not args.compile else 2

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.iteration += 1
            if self.iteration == 1:
                self.counter.__enter__()
            elif self.iteration == 2:
                self.counter.__exit__(None, None, None)
                c = self.counter
                self.lightning_syncs = {"aten_ops_per_iteration": c.ops, "host_syncs_per_iteration": dict(c.syncs)}
            else:
                timer.tick()
                if timer.done:
                    trainer.should_stop = True

    timing = Timing()
    callbacks: list = [timing]
    if args.ema is not None:
        if args.ema_impl == "lightning":
            from lightning.pytorch.callbacks import EMAWeightAveraging as EMA
        else:
            from callbacks.ema import DeviceEMA as EMA
        callbacks.append(EMA(decay=args.ema))
    module = build_module(args, mode=training, weight=ssl)
    quiet = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    budget = dict(max_steps=1_000_000, max_epochs=-1, num_sanity_val_steps=0, limit_val_batches=0)
    precision = "bf16-mixed" if args.precision == "bf16" else "32-true"
    run = dict(callbacks=callbacks, inference_mode=False, benchmark=args.cudnn_benchmark or None)
    trainer = pl.Trainer(accelerator=device.type, devices=1, precision=precision, **budget, **quiet, **run)
    trainer.fit(module, datamodule=dm)
    if not timer.done:
        raise RuntimeError(f"{bench}: training stopped before the timed windows were complete")
    syncs = timing.lightning_syncs or {}
    return {**summarize(timer, args.batch_size), **counts, **syncs, "training": training, "ssl_weight": ssl}


def bench_reversal(args: argparse.Namespace, device: torch.device) -> dict:
    module = build_module(args).to(device).eval()
    module.setup("predict")
    x, _ = test_images(args, args.rev_batch_size, device)
    x = module._prep(x)
    counter = OpCounter(device)
    if not args.compile:  # one reversal step counted (eager only), after a call that builds the views
        one = dataclasses.replace(module.reversal_cfg, steps=1)
        module.reverse(x, one)
        with counter:
            module.reverse(x, one)
    timer = WindowTimer(device, args.seconds, args.windows, args.warmup)
    while not timer.done:
        module.reverse(x)
        timer.tick()
    out = summarize(timer, args.rev_batch_size)
    if not args.compile:
        out.update({"aten_ops_per_reversal_step": counter.ops, "host_syncs_per_reversal_step": dict(counter.syncs)})
    out["reversal"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in module.reversal_cfg.__dict__.items()}
    return out


def bench_reversal_draws(args: argparse.Namespace, device: torch.device) -> dict:
    """The all-draws score's reversals of one batch: all ``--draws`` in one call, then one call per draw."""
    from lightning_modules.defense import DefendedModel

    module = build_module(args).to(device).eval()
    module.setup("test")
    x, y = test_images(args, args.rev_batch_size, device)
    defense = DefendedModel.from_module(module)
    out: dict = {}
    for name, d in (("one_call", defense), ("per_draw", defense.one_call_per_draw())):
        timer = WindowTimer(device, args.seconds, args.windows, args.warmup)
        while not timer.done:
            d.correct_draws(x, y, args.draws)
            timer.tick()
        out[name] = summarize(timer, args.rev_batch_size * args.draws)
    one, per_draw = out["one_call"], out["per_draw"]["images_per_s"]
    return {**one, "per_draw_images_per_s": per_draw, "speedup": one["images_per_s"] / per_draw, "draws": args.draws}


class _CountingModel(torch.nn.Module):
    """Logits of the classifier, counting model FLOPs as AutoAttack calls it."""

    def __init__(self, classifier: torch.nn.Module, f: float) -> None:
        super().__init__()
        self.classifier, self.f, self.flops = classifier, f, 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grad = torch.is_grad_enabled() and x.requires_grad
        self.flops += x.shape[0] * self.f * (3 if grad else 1)
        return self.classifier(x)[0]


def bench_autoattack(args: argparse.Namespace, device: torch.device, f: float) -> dict:
    from pyautoattack import AutoAttack

    torch.manual_seed(args.seed)  # the same model whatever ran before
    module = build_module(args, compile=False).to(device).eval()
    model = _CountingModel(module.classifier, f).eval()
    x, y = test_images(args, args.aa_n, device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():  # warm-up (cuDNN autotune, allocator)
        model(x[: min(len(x), args.aa_batch_size)])
    model.flops = 0.0
    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    custom = {} if args.aa_attacks == "standard" else {"attacks": args.aa_attacks.split(",")}
    version = "custom" if custom else "standard"
    aa = AutoAttack(model, norm="Linf", eps=8 / 255, version=version, device=device, seed=args.seed, **custom)
    aa.verbose = False
    synchronize(device)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=args.aa_batch_size)
    synchronize(device)
    dt = time.perf_counter() - t0
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
        robust = (model(x_adv).argmax(1) == y).float().mean().item()
    return {
        "images_per_s": args.aa_n / dt,
        "seconds": dt,
        "images": args.aa_n,
        "clean_acc": clean,
        "robust_acc": robust,
        "executed_flops_per_image": model.flops / args.aa_n,
        "attacks": args.aa_attacks,
        "model": args.checkpoint or "random init (its time says little about a robust model's)",
        "precision": "fp32 (AutoAttack is never run in bf16 here)",
    }
