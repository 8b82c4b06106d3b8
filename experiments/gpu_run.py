#!/usr/bin/env python
"""One prepared GPU run: benchmark, train and evaluate PreActResNet-18 in one call, results to one folder.

Stages, in order (``experiments/gpu_stages.py``, after training ``gpu_eval_stages.py``), each with a time
budget (a stage that overruns is cut short, its failure is recorded, the next stage still runs; the whole run
keeps to ``--total-seconds``, 560 s on a GPU: the device call allows 600; results written after every stage):

1. ``setup``    install the wheels of ``--wheels`` that the machine lacks (``make device-wheels`` prepares
                them), unpack the CIFAR-10 pack (``--pack``) into ``--work``/data;
2. ``bench``    ``experiments/bench.py`` twice: the tuned settings (bf16, channels_last, fast views, device
                EMA), then fp32; images/s and the ratio to the FLOP floor per benchmark;
3. ``train``    ``lightning fit --config experiments/cifar10/fast_recipe.yaml`` with ``--trainer.max_time``;
                the epochs are sized from the tuned bench so the one-cycle schedule ends inside the budget;
4. ``weights``  the trained weights as bf16 shards under 16 MiB (``lightning_modules.shards``);
5. ``grid``     clean / PGD-20 / reversed images of the first test images (``grid.png``);
   ``tf32``     PGD-20 on the first 250 test images with TF32 and with strict fp32 convolutions: whether the
                "fp32" attacks (TF32 convolutions, cuDNN's default on a GPU) give the same robust accuracy;
6. ``eval``     first ``--n-eval`` test images: clean, PGD-20, standard AutoAttack, each without and with
                the reversal (``--draws`` draws, correct only if every draw is); stops between rows once its
                budget is spent and reports how many images it reached;
7. ``adaptive`` ``--adaptive-attack`` (APGD-CE + EOT through the straight-through reversal) on the first
                ``--n-adaptive`` images (sized from the bench's reversal rate: 50-500);
8. ``aa_speed`` standard AutoAttack on the first ``--n-aa`` images twice: the package's speed settings (one
                batch, channels-last) and pyautoattack called plainly (batch 250); times, robust accuracies.

After every stage ``--out`` holds (at most 8 files): ``results.json``, ``results.md``, ``bench.json``,
``run.log``, ``grid.png`` and ``weights-NN-of-MM.pt`` (so a run killed midway still returns what it had).
``make gpu-results OUT=folder`` folds ``results.json`` into the README.

    python experiments/gpu_run.py --out $OUT                          # a GPU machine (make gpu-run)
    python experiments/gpu_run.py --device cpu --tiny --out results/gpu_run_tiny   # CI, < 1 min
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
import torch  # noqa: E402

from experiments.gpu_eval_stages import aa_speed, adaptive, evaluate, grid, tf32_check  # noqa: E402
from experiments.gpu_stages import bench, setup, train, weights  # noqa: E402
from experiments.run_tools import Tee  # noqa: E402


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default=os.environ.get("OUT") or "results/gpu_run", help="the returned folder ($OUT)")
    p.add_argument("--work", default=str(REPO / "results" / "gpu_run_work"), help="scratch folder (data, checkpoints)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tiny", action="store_true", help="small_cnn, synthetic data, budgets in seconds: the CI mode")
    p.add_argument(
        "--quick-attacks",
        action="store_true",
        help="APGD-CE for AutoAttack in eval and aa_speed (implied by --tiny): CPU checks only; "
        "on a model with robust points, standard AutoAttack runs for many minutes on a CPU",
    )
    p.add_argument("--wheels", default=".whl", help="wheels for what the machine lacks (make device-wheels)")
    p.add_argument(
        "--pack",
        default="shared_pack/cifar10-jpeg.npz",
        help="the CIFAR-10 JPEG pack (make device-wheels copies it here); --tiny: synthetic data instead",
    )
    p.add_argument("--data-dir", default=None, help="an existing cifar-10-batches-py parent (skips the unpack)")
    p.add_argument(
        "--total-seconds",
        type=float,
        default=None,
        help="the whole run (520; 180 with --tiny: caps, about a minute is spent on an idle CPU)",
    )
    p.add_argument("--bench-seconds", type=float, default=None, help="bench budget (80; 45 with --tiny)")
    p.add_argument("--train-seconds", type=float, default=None, help="training budget, max_time + 30 s (270; 60)")
    p.add_argument("--eval-seconds", type=float, default=None, help="evaluation budget (105; 25)")
    p.add_argument("--adaptive-seconds", type=float, default=None, help="adaptive attack budget (40; 20)")
    p.add_argument("--aa-seconds", type=float, default=None, help="AutoAttack speed comparison budget (50; 30)")
    p.add_argument("--n-eval", type=int, default=None, help="test images evaluated (1000; 16 with --tiny)")
    p.add_argument("--eval-batch", type=int, default=None, help="evaluation batch = the reversal's batch (250; 8)")
    p.add_argument("--draws", type=int, default=3, help="reversal draws per reversed input")
    p.add_argument(
        "--n-adaptive",
        type=int,
        default=None,
        help="images of the adaptive attack (default: sized from the bench's reversal rate, 50-500; 4 with --tiny)",
    )
    p.add_argument("--adaptive-steps", type=int, default=None, help="APGD steps of the adaptive attack (20; 5)")
    p.add_argument("--adaptive-eot", type=int, default=None, help="EOT draws per step of the adaptive attack (4; 1)")
    p.add_argument("--adaptive-attack", default="apgd_ce_bpda", help="an attack of the evaluation registry")
    p.add_argument("--n-aa", type=int, default=None, help="images of the AutoAttack speed comparison (500; 8)")
    p.add_argument("--aa-plain-batch", type=int, default=None, help="pyautoattack's batch when called plainly (250; 4)")
    p.add_argument(
        "--reversal-steps",
        type=int,
        default=None,
        help="reversal steps in the evaluation (default: the model's, 40; 3 with --tiny)",
    )
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: sized from the bench)")
    p.add_argument(
        "--train-args",
        default="",
        help="more `lightning fit` arguments, appended (e.g. '--data.init_args.batch_size 256')",
    )
    a = p.parse_args(argv)
    big = {
        "total_seconds": 560,
        "bench_seconds": 80,
        "train_seconds": 270,
        "eval_seconds": 105,
        "adaptive_seconds": 40,
        "aa_seconds": 50,
        "n_eval": 1000,
        "eval_batch": 250,
        "adaptive_steps": 20,
        "adaptive_eot": 4,
        "n_aa": 500,
        "aa_plain_batch": 250,
    }
    tiny = {
        "total_seconds": 180,
        "bench_seconds": 45,
        "train_seconds": 60,
        "eval_seconds": 25,
        "adaptive_seconds": 20,
        "aa_seconds": 30,
        "n_eval": 16,
        "eval_batch": 8,
        "n_adaptive": 4,
        "adaptive_steps": 5,
        "adaptive_eot": 1,
        "n_aa": 8,
        "aa_plain_batch": 4,
        "reversal_steps": 3,
    }
    for k, v in (tiny if a.tiny else big).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.quick_attacks = a.quick_attacks or a.tiny
    a.work = Path(a.work).resolve()
    a.out = Path(a.out)
    return a


class Run:
    """The stages, their budgets and the results; everything is written to ``out`` after every stage."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.t0 = args, time.monotonic()
        self.deadline = self.t0 + args.total_seconds
        self.results: dict[str, Any] = {"schema": 1, "meta": meta(args), "stages": {}}
        self.ckpt: Optional[Path] = None
        self.module = None
        self.test_split: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # uint8 images, labels (CPU)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def stage(
        self, name: str, budget: float, fn: Callable[[float], Any], reserve: float = 0.0, always: bool = False
    ) -> None:
        """Run ``fn(budget)`` with ``budget`` cut to what the deadline leaves after ``reserve`` seconds
        (``always``: run even past the deadline; for the few seconds that save the weights and the grid)."""
        budget = max(budget if always else 0, min(budget, self.left() - reserve))
        rec: dict[str, Any] = {"budget_s": round(budget, 1)}
        self.results["stages"][name] = rec
        t = time.monotonic()
        if budget <= 0:
            rec.update(status="skipped", error="no time left in --total-seconds")
        else:
            print(f"[gpu-run] {name}: budget {budget:.0f} s, {self.left():.0f} s left in the run", flush=True)
            try:
                value = fn(budget)
                rec["status"] = "cut" if isinstance(value, dict) and value.get("cut") else "ok"
                if value is not None:
                    self.results[name] = value
            except Exception as e:  # recorded; the next stage still runs
                rec.update(status="failed", error=f"{type(e).__name__}: {e}")
                traceback.print_exc()
        rec["wall_s"] = round(time.monotonic() - t, 1)
        print(
            f"[gpu-run] {name}: {rec['status']} in {rec['wall_s']} s"
            + (f" ({rec['error']})" if rec.get("error") else ""),
            flush=True,
        )
        self.write()

    def write(self) -> None:
        from experiments.gpu_results import render
        from lightning_modules.atomic import atomic_write_text

        self.results["meta"]["wall_s"] = round(time.monotonic() - self.t0, 1)
        atomic_write_text(self.args.out / "results.json", json.dumps(self.results, indent=2, default=str))
        atomic_write_text(self.args.out / "results.md", render(self.results) + "\n")


def meta(args: argparse.Namespace) -> dict[str, Any]:
    def git(*cmd: str) -> Optional[str]:
        try:
            return subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    cuda = args.device == "cuda" and torch.cuda.is_available()
    stamp = Path(args.wheels) / "COMMIT"  # the machine's copy of the tree may have no .git: make device-wheels
    commit = git("rev-parse", "--short=12", "HEAD") or (stamp.read_text().strip() if stamp.is_file() else None)
    return {
        "device": args.device,
        "tiny": args.tiny,
        "quick_attacks": args.quick_attacks,
        "tf32_convolutions": cuda and torch.backends.cudnn.allow_tf32,  # "fp32" attacks' convolutions
        "device_name": torch.cuda.get_device_name() if cuda else f"CPU {platform.machine()} ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "dirty": bool(git("status", "--porcelain")) if git("rev-parse", "HEAD") else None,
        "command": "make gpu-run" + (" DEVICE=cpu TINY=1" if args.tiny else ""),
        "argv": sys.argv[1:],
    }


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
    # tiny: APGD-CE for AutoAttack (an untrained tiny model's robust points make Square run all its queries)
    run.stage(
        "eval",
        a.eval_seconds,
        lambda b: evaluate(run, b, ["pgd", "apgd-ce" if a.quick_attacks else "autoattack"], a.n_eval),
        reserve=a.adaptive_seconds / 2,
    )
    run.stage("adaptive", a.adaptive_seconds, lambda b: adaptive(run, b), reserve=a.aa_seconds / 2)
    run.stage("aa_speed", a.aa_seconds, lambda b: aa_speed(run, b))
    print(
        f"[gpu-run] done in {time.monotonic() - run.t0:.0f} s; files in {a.out}: "
        + ", ".join(f"{p.name} ({p.stat().st_size / 2**20:.2f} MiB)" for p in sorted(a.out.iterdir())),
        flush=True,
    )
    run.write()
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    return run.results


if __name__ == "__main__":
    main()
