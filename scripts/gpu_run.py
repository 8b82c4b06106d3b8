#!/usr/bin/env python
"""One prepared GPU run: benchmark, train and evaluate PreActResNet-18 in one call, results to one folder.

Stages (``scripts/gpu_stages.py``, ``gpu_eval_stages.py``), each with a time budget (an overrun is cut and
recorded, the next stage runs; the run keeps to ``--total-seconds``, 560 s on a GPU, where a call allows 600):

1. ``setup``: install the ``--wheels`` the machine lacks (``make device-wheels``), unpack ``--pack``;
2. ``bench``: ``experiments/bench.py`` tuned (bf16, channels_last, fast views, device EMA), then fp32;
3. ``train``: ``lightning fit`` of ``experiments/cifar10/fast_recipe.yaml`` under ``--trainer.max_time``, the
   epochs sized from the tuned bench so the one-cycle schedule ends inside the budget;
4. ``weights``: bf16 shards under 16 MiB (``scripts/shards.py``); 5. ``grid``: clean / PGD-20 / reversed
   images (``grid.png``), ``tf32``: PGD-20 with TF32 and with strict fp32 convolutions, same robust accuracy?
6. ``eval``: clean, PGD-20, standard AutoAttack on the first ``--n-eval`` images without and with the reversal
   (``--draws`` draws, correct only if every draw is), stopping between rows at its budget;
7. ``adaptive``: ``--adaptive-attack`` (APGD-CE + EOT through the straight-through reversal) on the first
   ``--n-adaptive`` images (sized from the bench's reversal rate: 50-500);
8. ``aa_speed``: standard AutoAttack on ``--n-aa`` images with the package's speed settings and plainly.

After every stage ``--out`` holds (at most 8 files) ``results.json``, ``results.md``, ``bench.json``, ``run.log``,
``grid.png`` and ``weights-NN-of-MM.pt``; ``make gpu-results OUT=folder`` folds it into ``docs/results.md``.

    python scripts/gpu_run.py --out $OUT                                   # a GPU machine (make gpu-run)
    python scripts/gpu_run.py --device cpu --tiny --out results/gpu_run_tiny   # CI, < 1 min
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
import torch  # noqa: E402

from scripts.gpu_eval_stages import aa_speed, adaptive, evaluate, grid, tf32_check  # noqa: E402
from scripts.gpu_stages import bench, setup, train, weights  # noqa: E402
from scripts.run_tools import Run, Tee  # noqa: E402

# the sizes: flag, type, what, default on a GPU (a text: none, described), default with --tiny
SIZES = [
    ("total-seconds", float, "the whole run (with --tiny a cap: about a minute is spent on an idle CPU)", 560, 180),
    ("bench-seconds", float, "bench budget", 80, 45),
    ("train-seconds", float, "training budget, max_time + 30 s", 270, 60),
    ("eval-seconds", float, "evaluation budget", 105, 25),
    ("adaptive-seconds", float, "adaptive attack budget", 40, 20),
    ("aa-seconds", float, "AutoAttack speed comparison budget", 50, 30),
    ("n-eval", int, "test images evaluated", 1000, 16),
    ("eval-batch", int, "evaluation batch = the reversal's batch", 250, 8),
    ("n-adaptive", int, "images of the adaptive attack", "sized from the bench's reversal rate, 50-500", 4),
    ("adaptive-steps", int, "APGD steps of the adaptive attack", 20, 5),
    ("adaptive-eot", int, "EOT draws per step of the adaptive attack", 4, 1),
    ("n-aa", int, "images of the AutoAttack speed comparison", 500, 8),
    ("aa-plain-batch", int, "pyautoattack's batch when called plainly", 250, 4),
    ("reversal-steps", int, "reversal steps in the evaluation", "the model's, 40", 3),
]


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default=os.environ.get("OUT") or "results/gpu_run", help="the returned folder ($OUT)")
    p.add_argument("--work", default=str(REPO / "results" / "gpu_run_work"), help="scratch folder (data, checkpoints)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tiny", action="store_true", help="small_cnn, synthetic data, budgets in seconds: the CI mode")
    quick = "APGD-CE for AutoAttack in eval and aa_speed (implied by --tiny): CPU checks only; "
    quick += "on a model with robust points, standard AutoAttack runs for many minutes on a CPU"
    p.add_argument("--quick-attacks", action="store_true", help=quick)
    p.add_argument("--wheels", default=".whl", help="wheels for what the machine lacks (make device-wheels)")
    pack = "the CIFAR-10 JPEG pack (make device-wheels copies it here); --tiny: synthetic data instead"
    p.add_argument("--pack", default="shared_pack/cifar10-jpeg.npz", help=pack)
    p.add_argument("--data-dir", default=None, help="an existing cifar-10-batches-py parent (skips the unpack)")
    for flag, kind, what, big, tiny in SIZES:
        p.add_argument(f"--{flag}", type=kind, default=None, help=f"{what} (default {big}; {tiny} with --tiny)")
    p.add_argument("--draws", type=int, default=3, help="reversal draws per reversed input")
    p.add_argument("--adaptive-attack", default="apgd_ce_bpda", help="an attack of the evaluation registry")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: sized from the bench)")
    more = "more `lightning fit` arguments, appended (e.g. '--data.init_args.batch_size 256')"
    p.add_argument("--train-args", default="", help=more)
    a = p.parse_args(argv)
    for flag, _, _, big, tiny in SIZES:
        name, value = flag.replace("-", "_"), tiny if a.tiny else big
        if getattr(a, name) is None and not isinstance(value, str):
            setattr(a, name, value)
    a.quick_attacks = a.quick_attacks or a.tiny
    a.work = Path(a.work).resolve()
    a.out = Path(a.out)
    return a


def main(argv: Optional[list[str]] = None) -> dict:
    a = parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    a.work.mkdir(parents=True, exist_ok=True)
    (a.out / "run.log").write_text("")
    sys.stdout, sys.stderr = Tee(sys.__stdout__, a.out / "run.log"), Tee(sys.__stderr__, a.out / "run.log")
    os.environ.setdefault("WANDB_MODE", "disabled")
    if a.device == "cpu":
        torch.set_num_threads(1)
    run = Run(a)
    run.stage("setup", a.total_seconds, lambda b: setup(run, b))
    run.stage("bench", a.bench_seconds, lambda b: bench(run, b), reserve=a.train_seconds + a.eval_seconds)
    run.stage("train", a.train_seconds, lambda b: train(run, b), reserve=a.eval_seconds / 2)
    run.stage("weights", 60, lambda b: weights(run, b), always=True)
    run.stage("grid", 60, lambda b: grid(run, b), always=True)
    run.stage("tf32", 20, lambda b: tf32_check(run, b), reserve=a.eval_seconds)
    # quick: APGD-CE for AutoAttack (an untrained tiny model's robust points make Square run all its queries)
    attacks = ["pgd", "apgd-ce" if a.quick_attacks else "autoattack"]
    run.stage("eval", a.eval_seconds, lambda b: evaluate(run, b, attacks, a.n_eval), reserve=a.adaptive_seconds / 2)
    run.stage("adaptive", a.adaptive_seconds, lambda b: adaptive(run, b), reserve=a.aa_seconds / 2)
    run.stage("aa_speed", a.aa_seconds, lambda b: aa_speed(run, b))
    files = ", ".join(f"{p.name} ({p.stat().st_size / 2**20:.2f} MiB)" for p in sorted(a.out.iterdir()))
    print(f"[gpu-run] done in {time.monotonic() - run.t0:.0f} s; files in {a.out}: {files}", flush=True)
    run.write()
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    return run.results


if __name__ == "__main__":
    main()
