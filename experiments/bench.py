#!/usr/bin/env python
"""Throughput of the package's hot paths, in images/s and as a fraction of the FLOP floor.

Benchmarks (``--benches``, default all but ``trades``):

- ``pgd_at``      PGD-10 adversarial training, no contrastive head (``ssl_weight 0``);
- ``pgd_at_ssl``  the same + the contrastive head on 2 SimCLR views (the package's joint recipe);
- ``fgsm_rs``     Fast AT (FGSM with random start);
- ``trades``      TRADES (10 steps);
- ``reversal``    :meth:`ReversalModule.reverse` (40 steps x 4 views by default);
- ``autoattack``  pyautoattack's standard AutoAttack (always fp32) on ``--aa-n`` images.

The training benchmarks run the real path: a Lightning ``Trainer.fit`` of :class:`ReversalModule`
on a device-resident :class:`~datamodules.base.ArrayDataModule` (random crop + flip on the device),
with ``--precision bf16`` meaning ``precision="bf16-mixed"`` plus ``attack_amp``. Logger,
checkpointing and progress bar are off (the bar's refresh reads metrics back to the host).

Timing: ``--warmup`` steps, one probe step (synchronized) that sizes the windows, then
``--windows`` windows of equal step counts filling ``--seconds``; each window is timed with CUDA
events (GPU) or ``perf_counter`` (CPU, where every op is synchronous); the figure is the median.

FLOPs: the model's forward FLOPs per image are counted with ``torch.utils.flop_counter`` (2 per
multiply-add; convs and matmuls); a forward+backward counts 3x the forward, the issue's convention
(the attacks' backward, which skips weight gradients, really costs ~2x, so floors are conservative).
Floor = peak FLOP/s / FLOPs per image; ratio = measured / floor. The peak is ``--peak-tflops``, else
the H100 SXM datasheet lead for the precision on an H100 or H200 (bf16: 800, the issue's figure, below the
989 dense datasheet peak; fp32: 495, TF32 dense, because cuDNN runs fp32 convolutions in TF32 by
default), else the measured large-matmul rate (always measured and reported too).

Examples:
    python experiments/bench.py --device cpu --tiny --json bench-cpu.json          # CI, < 60 s
    python experiments/bench.py --device cuda --precision bf16 --channels-last --compile \\
        --views fast --json bench-bf16.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import statistics
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_leaves  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

TRAIN_BENCHES = ("pgd_at", "pgd_at_ssl", "fgsm_rs", "trades")
ALL_BENCHES = TRAIN_BENCHES + ("reversal", "autoattack")
DEFAULT_BENCHES = ("pgd_at", "pgd_at_ssl", "fgsm_rs", "reversal", "autoattack")
# aten ops that read a device value back to the host (a sync on CUDA) or have data-dependent shapes
SYNC_OPS = {
    "_local_scalar_dense",
    "is_nonzero",
    "nonzero",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "masked_select",
    "repeat_interleave",
}


# ---------------------------------------------------------------------------------------------
def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument(
        "--tiny", action="store_true", help="small_cnn (width 8), small batches, short windows: the CI / CPU mode"
    )
    p.add_argument("--backbone", default=None, help="default preact_resnet18 (small_cnn with --tiny)")
    p.add_argument("--batch-size", type=int, default=None, help="training batch (512; 32 with --tiny)")
    p.add_argument("--rev-batch-size", type=int, default=None, help="reversal batch (512; 16 with --tiny)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the classifier (ReversalModule compile)")
    p.add_argument("--compile-mode", default=None, help="e.g. reduce-overhead (CUDA graphs), max-autotune")
    p.add_argument("--views", default="kornia", choices=["kornia", "fast"], help="SimCLR views implementation")
    p.add_argument(
        "--progress-bar-metrics",
        action="store_true",
        help="keep ReversalModule's train_progress_bar on (3 host syncs a step in Lightning 2.6)",
    )
    p.add_argument(
        "--ema",
        type=float,
        default=None,
        metavar="DECAY",
        help="add an EMA of the weights (decay) to the training benchmarks (the recipes use one)",
    )
    p.add_argument(
        "--ema-impl",
        default="device",
        choices=["device", "lightning"],
        help="callbacks.DeviceEMA (sync-free) or Lightning's EMAWeightAveraging (2 host syncs a step)",
    )
    p.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    p.add_argument(
        "--benches", default=",".join(DEFAULT_BENCHES), help=f"comma-separated subset of {','.join(ALL_BENCHES)}"
    )
    p.add_argument("--seconds", type=float, default=None, help="timed seconds per benchmark (20; 1.5 with --tiny)")
    p.add_argument("--windows", type=int, default=None, help="timed windows per benchmark (5; 3 with --tiny)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (5; 1 with --tiny)")
    p.add_argument("--steps", type=int, default=10, help="PGD / TRADES steps of the training attack")
    p.add_argument("--rev-steps", type=int, default=None, help="reversal steps (40; 10 with --tiny)")
    p.add_argument("--rev-views", type=int, default=4)
    p.add_argument("--ssl-weight", type=float, default=0.5, help="for pgd_at_ssl")
    p.add_argument("--aa-n", type=int, default=None, help="AutoAttack images (500; 8 with --tiny)")
    p.add_argument("--aa-batch-size", type=int, default=500)
    p.add_argument(
        "--aa-attacks",
        default=None,
        help="'standard' (AutoAttack's standard version) or a comma list for version 'custom' "
        "(default standard; apgd-ce with --tiny: an untrained tiny model is nearly constant, "
        "so the images it gets right resist every attack and Square runs its 5,000 queries)",
    )
    p.add_argument("--n-train", type=int, default=None, help="synthetic training images (50000; 256 with --tiny)")
    p.add_argument(
        "--data-dir", default=None, help="CIFAR-10 python layout (e.g. from the pack) instead of synthetic images"
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        help="backbone weights (state dict or Lightning checkpoint) for reversal/AutoAttack: "
        "AutoAttack's time depends on how many images stay robust",
    )
    p.add_argument("--peak-tflops", type=float, default=None, help="peak FLOP/s of the device for the floor")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (1 with --tiny on CPU: on a shared 2-core machine 2 threads measured "
        "~100x slower elementwise ops than 1, from OpenMP contention)",
    )
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    tiny = a.tiny
    for name, big, small in [
        ("backbone", "preact_resnet18", "small_cnn"),
        ("batch_size", 512, 32),
        ("rev_batch_size", 512, 16),
        ("seconds", 20.0, 1.5),
        ("windows", 5, 3),
        ("warmup", 5, 1),
        ("aa_n", 500, 8),
        ("rev_steps", 40, 10),
        ("aa_attacks", "standard", "apgd-ce"),
        ("n_train", 50000, 256),
    ]:
        if getattr(a, name) is None:
            setattr(a, name, small if tiny else big)
    if a.threads is None and tiny and a.device == "cpu":
        a.threads = 1
    a.benches = [b.strip() for b in a.benches.split(",") if b.strip()]
    unknown = [b for b in a.benches if b not in ALL_BENCHES]
    if unknown:
        p.error(f"unknown benches {unknown}; choose from {list(ALL_BENCHES)}")
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA device is visible")
    return a


# ---------------------------------------------------------------------------------------------
class OpCounter(TorchDispatchMode):
    """Counts dispatched aten ops (a proxy for kernel launches) and those that read a device value back
    to the host. On a GPU only reads of GPU tensors count; on a CPU every such read counts (each
    would be a sync with the data on a GPU)."""

    def __init__(self, device: torch.device = torch.device("cpu")) -> None:
        super().__init__()
        self.ops = 0
        self.syncs: Counter = Counter()
        self.device = torch.device(device)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        name = func.__name__.split(".")[0]
        if name in SYNC_OPS and (
            self.device.type == "cpu"
            or any(isinstance(a, torch.Tensor) and a.device.type != "cpu" for a in tree_leaves((args, kwargs)))
        ):
            self.syncs[name] += 1
        return func(*args, **(kwargs or {}))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class WindowTimer:
    """Call :meth:`tick` after each unit of work; it warms up (at least one unit), probes one unit,
    then times ``windows`` windows.

    ``done`` turns true after the last window; :meth:`result` gives per-window seconds and steps.
    """

    def __init__(self, device: torch.device, seconds: float, windows: int, warmup: int) -> None:
        self.device, self.seconds, self.windows, self.warmup = device, seconds, max(1, windows), max(1, warmup)
        self.ticks = 0
        self.per_window = 0
        self.marks: list = []
        self.done = False
        self._t0 = 0.0
        self.probe_s = float("nan")

    def _mark(self):
        if self.device.type == "cuda":
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def tick(self) -> None:
        self.ticks += 1
        if self.done:
            return
        if self.ticks == self.warmup:  # end of warm-up: probe one step
            synchronize(self.device)
            self._t0 = time.perf_counter()
        elif self.ticks == self.warmup + 1:  # end of the probe step: size the windows
            synchronize(self.device)
            self.probe_s = time.perf_counter() - self._t0
            self.per_window = max(1, int(self.seconds / self.windows / max(self.probe_s, 1e-9)))
            self.marks = [self._mark()]
        elif self.per_window and (self.ticks - self.warmup - 1) % self.per_window == 0:
            self.marks.append(self._mark())
            if len(self.marks) == self.windows + 1:
                self.done = True

    def result(self) -> list[float]:
        """Seconds per window (synchronizes)."""
        synchronize(self.device)
        if self.device.type == "cuda":
            return [a.elapsed_time(b) / 1e3 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


def summarize(timer: WindowTimer, images_per_step: int) -> dict:
    secs = timer.result()
    rates = [timer.per_window * images_per_step / s for s in secs]
    return {
        "images_per_s": statistics.median(rates),
        "windows_images_per_s": rates,
        "steps_per_window": timer.per_window,
        "images_per_step": images_per_step,
        "probe_step_s": timer.probe_s,
    }


# ---------------------------------------------------------------------------------------------
def forward_flops(classifier: torch.nn.Module, size: int, device: torch.device, channels_last: bool) -> float:
    """Forward FLOPs per image (2 per multiply-add), counted on a batch of 2 in eval mode."""
    was = classifier.training
    classifier.eval()
    x = torch.rand(2, 3, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        classifier(x)
    classifier.train(was)
    return fc.get_total_flops() / 2


def matmul_tflops(device: torch.device, precision: str, seconds: float = 1.0) -> float:
    """Measured FLOP/s of a large square matmul in the benchmark's precision (TFLOP/s)."""
    n = 4096 if device.type == "cuda" else 512
    dtype = torch.bfloat16 if (precision == "bf16" and device.type == "cuda") else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    reps, t0 = 0, time.perf_counter()
    while True:
        for _ in range(4):
            a @ b
        reps += 4
        synchronize(device)
        if time.perf_counter() - t0 >= seconds:
            break
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def peak_tflops(args: argparse.Namespace, device: torch.device, measured: float) -> tuple[float, str]:
    if args.peak_tflops is not None:
        return args.peak_tflops, "--peak-tflops"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    if "H100" in name or "H200" in name:  # the same compute units: an H200 is an H100 with more, faster memory
        if args.precision == "bf16":
            return 800.0, "H100-class bf16 lead of the issue (datasheet dense peak 989)"
        if torch.backends.cudnn.allow_tf32:
            return 495.0, "H100-class SXM datasheet TF32 dense (cuDNN runs fp32 convs in TF32 by default)"
        return 67.0, "H100-class SXM datasheet fp32 (non-tensor-core)"
    return measured, f"measured {('bf16' if args.precision == 'bf16' and device.type == 'cuda' else 'fp32')} matmul"


def flops_per_image(bench: str, f: float, args: argparse.Namespace) -> float:
    """Model FLOPs one image costs in ``bench`` (forward+backward = 3 forwards)."""
    if bench == "pgd_at":
        return (args.steps + 1) * 3 * f
    if bench == "pgd_at_ssl":
        return (args.steps + 1 + 2) * 3 * f  # + 2 SimCLR views through the backbone
    if bench == "fgsm_rs":
        return 2 * 3 * f
    if bench == "trades":
        return f + args.steps * 3 * f + 2 * 3 * f
    if bench == "reversal":
        return args.rev_steps * args.rev_views * 3 * f
    raise ValueError(bench)


# ---------------------------------------------------------------------------------------------
def _build_module(args: argparse.Namespace, **overrides):
    from lightning_modules import ReversalModule
    from lightning_modules.reversal import ReversalConfig

    kw = dict(
        backbone=args.backbone,
        backbone_kwargs={"width": 8} if args.backbone == "small_cnn" and args.tiny else None,
        attack=dict(mode="pgd", steps=args.steps),
        ssl=dict(weight=0.0, views=args.views),
        optim=dict(lr=0.1, schedule="onecycle"),
        inference=dict(val_attack_steps=0),
        speed=dict(
            attack_amp=args.precision == "bf16",
            channels_last=args.channels_last,
            compile=args.compile,
            compile_mode=args.compile_mode,
            train_progress_bar=args.progress_bar_metrics,
        ),
        reversal=ReversalConfig(
            steps=args.rev_steps, n_views=args.rev_views, views=args.views, amp=args.precision == "bf16"
        ),
    )
    for key, value in overrides.items():  # a field of a settings group, or a top-level argument
        group = next((g for g in ("attack", "ssl", "speed") if key in kw.get(g, {})), None)
        if group is not None:
            kw[group][key] = value
        else:
            kw[key] = value
    m = ReversalModule(**kw)
    if args.checkpoint:
        m.load_backbone(args.checkpoint)
    return m


def _datamodule(args: argparse.Namespace):
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


def _test_images(args: argparse.Namespace, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    dm = _datamodule(args)
    x, y = dm.load_split("test")
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
    b = batch[0].shape[0]
    return {
        "executed_flops_per_image": fc.get_total_flops() / b,
        "aten_ops_per_step": counter.ops,
        "host_syncs_in_step": dict(counter.syncs),
    }


def bench_train(bench: str, args: argparse.Namespace, device: torch.device) -> dict:
    import lightning.pytorch as pl

    training = {"pgd_at": "pgd", "pgd_at_ssl": "pgd", "fgsm_rs": "fgsm_rs", "trades": "trades"}[bench]
    ssl = args.ssl_weight if bench == "pgd_at_ssl" else 0.0
    # the counts: an eager copy (compile off), one step on a real batch from the loader
    dm = _datamodule(args)
    dm.setup("fit")
    loader = dm._loader("train", train=True)
    loader.device = device
    batch = next(iter(loader))
    eager = _build_module(args, mode=training, weight=ssl, compile=False).to(device)
    if args.channels_last:
        eager.classifier.to(memory_format=torch.channels_last)
    counts = count_step(eager, batch, device)
    del eager

    timer = WindowTimer(device, args.seconds, args.windows, args.warmup)

    class Timing(pl.Callback):
        """Eager runs: iteration 1 (batch end to batch end: data, step, hooks, logging) is counted, then
        the timer starts; compiled runs go straight to the timer (a dispatch mode would upset dynamo)."""

        def __init__(self) -> None:
            self.lightning_syncs: Optional[dict] = None
            self._counter: Optional[OpCounter] = None
            self._iteration = 0 if not args.compile else 2

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self._iteration += 1
            if self._iteration == 1:
                self._counter = OpCounter(device)
                self._counter.__enter__()
                return
            if self._iteration == 2 and self._counter is not None:
                self._counter.__exit__(None, None, None)
                self.lightning_syncs = {
                    "aten_ops_per_iteration": self._counter.ops,
                    "host_syncs_per_iteration": dict(self._counter.syncs),
                }
                self._counter = None
                return
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
    module = _build_module(args, mode=training, weight=ssl)
    trainer = pl.Trainer(
        accelerator=device.type,
        devices=1,
        precision="bf16-mixed" if args.precision == "bf16" else "32-true",
        max_steps=1_000_000,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=callbacks,
        inference_mode=False,
        benchmark=args.cudnn_benchmark or None,
    )
    trainer.fit(module, datamodule=dm)
    if not timer.done:
        raise RuntimeError(f"{bench}: training stopped before the timed windows were complete")
    out = summarize(timer, args.batch_size)
    out.update(counts)
    if timing.lightning_syncs:
        out.update(timing.lightning_syncs)
    out["training"] = training
    out["ssl_weight"] = ssl
    return out


def bench_reversal(args: argparse.Namespace, device: torch.device) -> dict:
    module = _build_module(args).to(device).eval()
    module.setup("predict")
    x, _ = _test_images(args, args.rev_batch_size, device)
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


class _CountingModel(torch.nn.Module):
    """Logits of the classifier, counting model FLOPs as AutoAttack calls it."""

    def __init__(self, classifier: torch.nn.Module, f: float) -> None:
        super().__init__()
        self.classifier, self.f = classifier, f
        self.flops = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grad = torch.is_grad_enabled() and x.requires_grad
        self.flops += x.shape[0] * self.f * (3 if grad else 1)
        return self.classifier(x)[0]


def bench_autoattack(args: argparse.Namespace, device: torch.device, f: float) -> dict:
    from pyautoattack import AutoAttack

    torch.manual_seed(args.seed)  # the same model whatever ran before
    module = _build_module(args, compile=False).to(device).eval()
    model = _CountingModel(module.classifier, f).eval()
    x, y = _test_images(args, args.aa_n, device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():  # warm-up (cuDNN autotune, allocator)
        model(x[: min(len(x), args.aa_batch_size)])
    model.flops = 0.0
    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    if args.aa_attacks == "standard":
        aa = AutoAttack(model, norm="Linf", eps=8 / 255, version="standard", device=device, seed=args.seed)
    else:
        aa = AutoAttack(
            model,
            norm="Linf",
            eps=8 / 255,
            version="custom",
            device=device,
            seed=args.seed,
            attacks=args.aa_attacks.split(","),
        )
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


# ---------------------------------------------------------------------------------------------
def main(argv: Optional[list[str]] = None) -> dict:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> dict:
    os.environ.setdefault("WANDB_MODE", "disabled")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*self.log.*")
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True

    probe = _build_module(args, compile=False).to(device)
    if args.channels_last:
        probe.classifier.to(memory_format=torch.channels_last)
    f = forward_flops(probe.classifier, 32, device, args.channels_last)
    del probe
    measured = matmul_tflops(device, args.precision, 0.5 if args.tiny else 2.0)
    peak, source = peak_tflops(args, device, measured)
    info = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()} "
        f"({os.cpu_count()} cores, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "forward_gflop_per_image": f / 1e9,
        "matmul_tflops_measured": measured,
        "peak_tflops": peak,
        "peak_source": source,
    }
    results: dict[str, dict] = {}
    from lightning_modules.atomic import atomic_write_text
    from lightning_modules.progress import time_left

    benches, t_all = list(args.benches), time.perf_counter()
    for bench in benches:
        t0 = time.perf_counter()
        if bench in TRAIN_BENCHES:
            r = bench_train(bench, args, device)
        elif bench == "reversal":
            r = bench_reversal(args, device)
        else:
            r = bench_autoattack(args, device, f)
        fl = r.get("executed_flops_per_image") if bench == "autoattack" else flops_per_image(bench, f, args)
        r["flops_per_image"] = fl
        r["floor_images_per_s"] = peak * 1e12 / fl if fl else float("nan")
        r["ratio_to_floor"] = r["images_per_s"] / r["floor_images_per_s"] if fl else float("nan")
        r["achieved_tflops"] = r["images_per_s"] * fl / 1e12 if fl else float("nan")
        r["wall_s"] = time.perf_counter() - t0
        if device.type == "cuda":
            r["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            torch.cuda.reset_peak_memory_stats(device)
        results[bench] = r
        done = list(results).index(bench) + 1
        left = time_left(time.perf_counter() - t_all, done, len(benches))
        print(
            f"[bench] {done}/{len(benches)} {bench}: {r['images_per_s']:.1f} images/s ({r['wall_s']:.1f} s), {left}",
            flush=True,
        )
    report = {**info, "results": results}
    print_table(report)
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(report, indent=2, default=str))
    return report


def print_table(report: dict) -> None:
    c = report["config"]
    print(
        f"\n{report['device_name']} | torch {report['torch']} | {c['backbone']} batch {c['batch_size']} | "
        f"{c['precision']}{' channels_last' if c['channels_last'] else ''}{' compile' if c['compile'] else ''}"
        f"{' cudnn.benchmark' if c['cudnn_benchmark'] else ''} | views {c['views']}"
    )
    print(
        f"forward {report['forward_gflop_per_image']:.4g} GFLOP/image | peak {report['peak_tflops']:.4g} TFLOP/s "
        f"({report['peak_source']}) | matmul measured {report['matmul_tflops_measured']:.4g} TFLOP/s"
    )
    head = f"{'bench':<12}{'images/s':>12}{'floor':>12}{'ratio':>9}{'TFLOP/s':>10}{'GFLOP/img':>11}  host syncs"
    print(head)
    print("-" * len(head))

    def n(d: Optional[dict]) -> str:
        return "-" if d is None else str(sum(d.values()))

    for name, r in report["results"].items():
        if "host_syncs_in_step" in r:
            syncs = f"{n(r['host_syncs_in_step'])} step, {n(r.get('host_syncs_per_iteration'))} loop"
        else:
            syncs = n(r.get("host_syncs_per_reversal_step"))
        print(
            f"{name:<12}{r['images_per_s']:>12.1f}{r['floor_images_per_s']:>12.1f}{r['ratio_to_floor']:>9.3f}"
            f"{r['achieved_tflops']:>10.3g}{r['flops_per_image'] / 1e9:>11.4g}  {syncs}"
        )
    print("syncs: device->host reads counted per training step / whole loop iteration / reversal step (eager)")


if __name__ == "__main__":
    main()
