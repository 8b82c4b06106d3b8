"""Timing and FLOP counting of ``experiments/bench.py``: op / host-sync counters, window timers, the
model's FLOPs per image and the FLOP floor (see bench.py's docstring for the conventions)."""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

# aten ops that read a device value back to the host (a sync on CUDA) or have data-dependent shapes
SYNC_OPS = {"_local_scalar_dense", "is_nonzero", "nonzero", "_unique2", "unique_dim", "unique_consecutive"}
SYNC_OPS |= {"masked_select", "repeat_interleave"}


class OpCounter(TorchDispatchMode):
    """Counts dispatched aten ops (a proxy for kernel launches) and those that read a device value back to the
    host: on a GPU only reads of GPU tensors, on a CPU every such read (each would be a sync on a GPU)."""

    def __init__(self, device: torch.device = torch.device("cpu")) -> None:
        super().__init__()
        self.ops, self.syncs, self.device = 0, Counter(), torch.device(device)

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
    then times ``windows`` windows. ``done`` turns true after the last; :meth:`result`: seconds per window."""

    def __init__(self, device: torch.device, seconds: float, windows: int, warmup: int) -> None:
        self.device, self.seconds, self.windows, self.warmup = device, seconds, max(1, windows), max(1, warmup)
        self.ticks, self.per_window, self.marks, self.done = 0, 0, [], False
        self._t0, self.probe_s = 0.0, float("nan")

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
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    reps, t0 = 0, time.perf_counter()
    while not reps or time.perf_counter() - t0 < seconds:  # at least one round, synchronized before each check
        for _ in range(4):
            a @ b
        reps += 4
        synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def peak_tflops(args: argparse.Namespace, device: torch.device, measured: float) -> tuple[float, str]:
    if args.peak_tflops is not None:
        return args.peak_tflops, "--peak-tflops"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    if "H100" in name or "H200" in name:  # the same compute units: an H200 is an H100 with more, faster memory
        if args.precision == "bf16":
            return 800.0, "H100-class bf16 lead (datasheet dense peak 989)"
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
    if bench in ("reversal", "reversal_draws"):  # per image-draw
        return args.rev_steps * args.rev_views * 3 * f
    raise ValueError(bench)
