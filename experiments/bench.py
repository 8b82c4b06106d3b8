#!/usr/bin/env python
"""Throughput of the package's hot paths, in images/s and as a fraction of the FLOP floor.

Benchmarks (``--benches``, default all but ``trades``): ``pgd_at`` (PGD-10 AT, ``ssl_weight 0``), ``pgd_at_ssl``
(+ the contrastive head on 2 SimCLR views: the joint recipe), ``fgsm_rs`` (Fast AT), ``trades`` (10 steps),
``reversal`` (:meth:`ReversalModule.reverse`, 40 steps x 4 views), ``reversal_draws`` (the evaluation's
``--draws`` reversals of one batch in one call, beside one call per draw; images/s counts image-draws) and
``autoattack`` (pyautoattack's standard AutoAttack, always fp32, on ``--aa-n`` images). Training runs a
Lightning ``Trainer.fit`` on a device-resident ``ArrayDataModule``, logger, checkpointing and progress bar off
(the bar reads metrics back to the host); ``--precision bf16`` means ``bf16-mixed`` plus ``attack_amp``.
Timing: the median of ``--windows`` windows filling ``--seconds``, after ``--warmup`` steps and a probe step.

FLOPs per image from ``torch.utils.flop_counter`` (2 per multiply-add), a forward+backward as 3 forwards
(conservative: the attacks' backward skips weight gradients). Floor = peak FLOP/s / FLOPs per image; ratio =
measured / floor. Peak: ``--peak-tflops``, else on an H100 or H200 the H100 SXM figure (bf16: 800, the target
lead, below the 989 dense peak; fp32: 495, TF32 dense, cuDNN's default for fp32 convolutions), else the
measured large-matmul rate (always reported too).

    python experiments/bench.py --device cpu --tiny --json bench-cpu.json          # CI, < 60 s
    python experiments/bench.py --device cuda --precision bf16 --channels-last --compile --views fast
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from experiments.bench_cases import (  # noqa: E402
    bench_autoattack,
    bench_reversal,
    bench_reversal_draws,
    bench_train,
    build_module,
)
from experiments.bench_timing import flops_per_image, forward_flops, matmul_tflops, peak_tflops  # noqa: E402

TRAIN_BENCHES = ("pgd_at", "pgd_at_ssl", "fgsm_rs", "trades")
ALL_BENCHES = TRAIN_BENCHES + ("reversal", "reversal_draws", "autoattack")
DEFAULT_BENCHES = ("pgd_at", "pgd_at_ssl", "fgsm_rs", "reversal", "reversal_draws", "autoattack")
# the defaults left unset: (full size, with --tiny)
SIZES = dict(backbone=("preact_resnet18", "small_cnn"), batch_size=(512, 32), rev_batch_size=(512, 16), aa_n=(500, 8))
SIZES.update(seconds=(20.0, 1.5), windows=(5, 3), warmup=(5, 1), rev_steps=(40, 10), n_train=(50000, 256))
SIZES.update(aa_attacks=("standard", "apgd-ce"))


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = p.add_argument
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    add("--tiny", action="store_true", help="small_cnn (width 8), small batches, short windows: the CI / CPU mode")
    add("--backbone", default=None, help="default preact_resnet18 (small_cnn with --tiny)")
    add("--batch-size", type=int, default=None, help="training batch (512; 32 with --tiny)")
    add("--rev-batch-size", type=int, default=None, help="reversal batch (512; 16 with --tiny)")
    add("--precision", default="fp32", choices=["fp32", "bf16"])
    add("--channels-last", action="store_true")
    add("--compile", action="store_true", help="torch.compile the classifier (ReversalModule compile)")
    add("--compile-mode", default=None, help="e.g. reduce-overhead (CUDA graphs), max-autotune")
    add("--views", default="kornia", choices=["kornia", "fast"], help="SimCLR views implementation")
    bar_help = "keep ReversalModule's train_progress_bar on (3 host syncs a step in Lightning 2.6)"
    add("--progress-bar-metrics", action="store_true", help=bar_help)
    ema_help = "add an EMA of the weights (decay) to the training benchmarks (the recipes use one)"
    add("--ema", type=float, default=None, metavar="DECAY", help=ema_help)
    ema_impl_help = "callbacks.DeviceEMA (sync-free) or Lightning's EMAWeightAveraging (2 host syncs a step)"
    add("--ema-impl", default="device", choices=["device", "lightning"], help=ema_impl_help)
    add("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    add("--benches", default=",".join(DEFAULT_BENCHES), help=f"comma-separated subset of {','.join(ALL_BENCHES)}")
    add("--seconds", type=float, default=None, help="timed seconds per benchmark (20; 1.5 with --tiny)")
    add("--windows", type=int, default=None, help="timed windows per benchmark (5; 3 with --tiny)")
    add("--warmup", type=int, default=None, help="untimed steps first (5; 1 with --tiny)")
    add("--steps", type=int, default=10, help="PGD / TRADES steps of the training attack")
    add("--rev-steps", type=int, default=None, help="reversal steps (40; 10 with --tiny)")
    add("--rev-views", type=int, default=4)
    add("--draws", type=int, default=5, help="reversal draws per batch (reversal_draws)")
    add("--ssl-weight", type=float, default=0.5, help="for pgd_at_ssl")
    add("--aa-n", type=int, default=None, help="AutoAttack images (500; 8 with --tiny)")
    add("--aa-batch-size", type=int, default=500)
    aa_help = "'standard' (AutoAttack's standard version) or a comma list for version 'custom' "
    aa_help += "(default standard; apgd-ce with --tiny: an untrained tiny model is nearly constant, "
    aa_help += "so the images it gets right resist every attack and Square runs its 5,000 queries)"
    add("--aa-attacks", default=None, help=aa_help)
    add("--n-train", type=int, default=None, help="synthetic training images (50000; 256 with --tiny)")
    add("--data-dir", default=None, help="CIFAR-10 python layout (e.g. from the pack) instead of synthetic images")
    ckpt_help = "backbone weights (state dict or Lightning checkpoint) for reversal/AutoAttack: "
    ckpt_help += "AutoAttack's time depends on how many images stay robust"
    add("--checkpoint", default=None, help=ckpt_help)
    add("--peak-tflops", type=float, default=None, help="peak FLOP/s of the device for the floor")
    threads_help = "torch CPU threads (1 with --tiny on CPU: on a shared 2-core machine 2 threads measured "
    threads_help += "~100x slower elementwise ops than 1, from OpenMP contention)"
    add("--threads", type=int, default=None, help=threads_help)
    add("--json", default=None, help="write the results here")
    add("--seed", type=int, default=0)
    a = p.parse_args(argv)
    for name, (big, small) in SIZES.items():
        if getattr(a, name) is None:
            setattr(a, name, small if a.tiny else big)
    if a.threads is None and a.tiny and a.device == "cpu":
        a.threads = 1
    a.benches = [b.strip() for b in a.benches.split(",") if b.strip()]
    unknown = [b for b in a.benches if b not in ALL_BENCHES]
    if unknown:
        p.error(f"unknown benches {unknown}; choose from {list(ALL_BENCHES)}")
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA device is visible")
    return a


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

    probe = build_module(args, compile=False).to(device)
    if args.channels_last:
        probe.classifier.to(memory_format=torch.channels_last)
    f = forward_flops(probe.classifier, 32, device, args.channels_last)
    del probe
    measured = matmul_tflops(device, args.precision, 0.5 if args.tiny else 2.0)
    peak, source = peak_tflops(args, device, measured)
    cpu = f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    info = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "torch": torch.__version__,
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "forward_gflop_per_image": f / 1e9,
        "matmul_tflops_measured": measured,
        "peak_tflops": peak,
        "peak_source": source,
    }
    results: dict[str, dict] = {}
    from lightning_modules.util import atomic_write_text, time_left

    benches, t_all = list(args.benches), time.perf_counter()
    for bench in benches:
        t0 = time.perf_counter()
        if bench in TRAIN_BENCHES:
            r = bench_train(bench, args, device)
        elif bench == "autoattack":
            r = bench_autoattack(args, device, f)
        else:
            r = (bench_reversal if bench == "reversal" else bench_reversal_draws)(args, device)
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
        if args.json:  # after every benchmark: a run killed midway leaves what it finished
            report = {**info, "results": results, "complete": len(results) == len(benches)}
            atomic_write_text(Path(args.json), json.dumps(report, indent=2, default=str))
        done = list(results).index(bench) + 1
        left = time_left(time.perf_counter() - t_all, done, len(benches))
        msg = f"[bench] {done}/{len(benches)} {bench}: {r['images_per_s']:.1f} images/s ({r['wall_s']:.1f} s), {left}"
        print(msg, flush=True)
    report = {**info, "results": results, "complete": True}
    print_table(report)
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
