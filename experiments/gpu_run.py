#!/usr/bin/env python
"""One prepared GPU run: benchmark, train and evaluate PreActResNet-18 in one call, results to one folder.

Stages, in order, each with a time budget (a stage that overruns is cut short, its failure is recorded,
the next stage still runs; the whole run keeps to ``--total-seconds``, 520 s on a GPU: the device call allows 600):

1. ``setup``    install the wheels of ``--wheels`` that the machine lacks (``make device-wheels`` prepares
                them), unpack the CIFAR-10 pack (``--pack``) into ``--work``/data;
2. ``bench``    ``experiments/bench.py`` twice: fp32, then the tuned settings (bf16, channels_last, fast
                views, device EMA); images/s and the ratio to the FLOP floor per benchmark;
3. ``train``    ``lightning fit --config experiments/cifar10/fast_recipe.yaml`` with ``--trainer.max_time``;
                the epochs are sized from the tuned bench so the one-cycle schedule ends inside the budget;
4. ``weights``  the trained weights as bf16 shards under 16 MiB (``lightning_modules.shards``);
5. ``grid``     clean / PGD-20 / reversed images of the first test images (``grid.png``);
6. ``eval``     first ``--n-eval`` test images: clean, PGD-20, standard AutoAttack, each without and with
                the reversal (``--draws`` draws, correct only if every draw is); stops between rows once its
                budget is spent and reports how many images it reached;
7. ``adaptive`` ``--adaptive-attack`` (APGD-CE + EOT through the straight-through reversal) on the first
                ``--n-adaptive`` images.

After every stage ``--out`` holds (at most 8 files): ``results.json``, ``results.md``, ``bench.json``,
``run.log``, ``grid.png`` and ``weights-NN-of-MM.pt`` (so a run killed midway still returns what it had).
``make gpu-results OUT=folder`` folds ``results.json`` into the README.

    python experiments/gpu_run.py --out $OUT                          # a GPU machine (make gpu-run)
    python experiments/gpu_run.py --device cpu --tiny --out results/gpu_run_tiny   # CI, < 1 min
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
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

from experiments.run_tools import Tee, run_logged, synthetic_cifar10  # noqa: E402

NEEDED = ("kornia", "pyautoattack", "jsonargparse", "docstring_parser", "typeshed_client")
BENCH_TUNED = ["--precision", "bf16", "--channels-last", "--views", "fast", "--ema", "0.998"]


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default=os.environ.get("OUT") or "results/gpu_run", help="the returned folder ($OUT)")
    p.add_argument("--work", default=str(REPO / "results" / "gpu_run_work"), help="scratch folder (data, checkpoints)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tiny", action="store_true", help="small_cnn, synthetic data, budgets in seconds: the CI mode")
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
    p.add_argument("--bench-seconds", type=float, default=None, help="bench budget (75; 45 with --tiny)")
    p.add_argument("--train-seconds", type=float, default=None, help="training budget, max_time + 30 s (270; 60)")
    p.add_argument("--eval-seconds", type=float, default=None, help="evaluation budget (110; 25)")
    p.add_argument("--adaptive-seconds", type=float, default=None, help="adaptive attack budget (45; 20)")
    p.add_argument("--n-eval", type=int, default=None, help="test images evaluated (1000; 16 with --tiny)")
    p.add_argument("--eval-batch", type=int, default=None, help="evaluation batch = the reversal's batch (250; 8)")
    p.add_argument("--draws", type=int, default=3, help="reversal draws per reversed input")
    p.add_argument("--n-adaptive", type=int, default=None, help="images of the adaptive attack (100; 8)")
    p.add_argument("--adaptive-attack", default="apgd_ce_bpda", help="an attack of the evaluation registry")
    p.add_argument(
        "--reversal-steps",
        type=int,
        default=None,
        help="reversal steps in the evaluation (default: the model's, 40; 3 with --tiny)",
    )
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: sized from the bench)")
    a = p.parse_args(argv)
    big = {
        "total_seconds": 520,
        "bench_seconds": 75,
        "train_seconds": 270,
        "eval_seconds": 110,
        "adaptive_seconds": 45,
        "n_eval": 1000,
        "eval_batch": 250,
        "n_adaptive": 100,
    }
    tiny = {
        "total_seconds": 180,
        "bench_seconds": 45,
        "train_seconds": 60,
        "eval_seconds": 25,
        "adaptive_seconds": 20,
        "n_eval": 16,
        "eval_batch": 8,
        "n_adaptive": 4,
        "reversal_steps": 3,
    }
    for k, v in (tiny if a.tiny else big).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
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

        self.results["meta"]["wall_s"] = round(time.monotonic() - self.t0, 1)
        out = self.args.out
        (out / "results.json.tmp").write_text(json.dumps(self.results, indent=2, default=str))
        (out / "results.json.tmp").replace(out / "results.json")
        (out / "results.md.tmp").write_text(render(self.results) + "\n")
        (out / "results.md.tmp").replace(out / "results.md")


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
        "device_name": torch.cuda.get_device_name() if cuda else f"CPU {platform.machine()} ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "dirty": bool(git("status", "--porcelain")) if git("rev-parse", "HEAD") else None,
        "command": "make gpu-run" + (" DEVICE=cpu TINY=1" if args.tiny else ""),
        "argv": sys.argv[1:],
    }


# -- stages ----------------------------------------------------------------------------------------
def setup(run: Run, budget: float) -> dict:
    a, out = run.args, {}
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]  # found, not imported
    if missing:
        wheels = sorted(Path(a.wheels).glob("*.whl")) if Path(a.wheels).is_dir() else []
        if not wheels:
            raise FileNotFoundError(
                f"missing {', '.join(missing)} and no wheels in {a.wheels}: run `make device-wheels` "
                f"on the development machine and name {a.wheels} in the device call's carry"
            )
        site = a.work / "site"
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--no-cache-dir",
            "--upgrade",
            "--target",
            str(site),
            *map(str, wheels),
        ]
        rc, text, _ = run_logged(cmd, budget)
        if rc != 0:
            raise RuntimeError(f"pip install of {a.wheels}/*.whl failed ({rc}): {text[-500:]}")
        sys.path.insert(0, str(site))
        os.environ["PYTHONPATH"] = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        out["installed"] = [w.name for w in wheels]
    out["data_dir"] = str(prepare_data(a, budget))
    return out


def prepare_data(a: argparse.Namespace, budget: float) -> Path:
    if a.data_dir:
        return Path(a.data_dir)
    data = a.work / ("data_tiny" if a.tiny else "data")  # never one for the other
    if (data / "cifar-10-batches-py" / "test_batch").is_file():
        return data
    if a.tiny:  # the same on every machine, with or without the pack
        return synthetic_cifar10(data)
    pack = Path(a.pack)
    if pack.is_file():
        script = pack.with_name("cifar10_from_pack.py")
        if not script.is_file():
            raise FileNotFoundError(f"{script} is missing beside the pack: `make device-wheels` copies both")
        rc, text, _ = run_logged([sys.executable, str(script), "--out", str(data), "--pack", str(pack)], budget)
        if rc != 0:
            raise RuntimeError(f"unpacking {pack} failed ({rc}): {text[-500:]}")
        return data
    raise FileNotFoundError(
        f"no CIFAR-10 pack at {pack}: run `make device-wheels` (copies it to shared_pack/) "
        "and name shared_pack in the device call's carry, or pass --data-dir"
    )


def bench(run: Run, budget: float) -> dict:
    """Both configurations in one process (one start-up), killed at the budget; a cut keeps what finished."""
    a = run.args
    common = ["--device", a.device]
    if a.tiny:
        common += [
            "--tiny",
            "--seconds",
            "0.2",
            "--windows",
            "1",
            "--rev-steps",
            "2",
            "--aa-n",
            "4",
            "--n-train",
            "64",
            "--benches",
            "pgd_at,fgsm_rs,reversal,autoattack",
        ]
    else:
        common += ["--seconds", "3", "--windows", "3", "--warmup", "3", "--aa-n", "250"]
    configs = {
        "fp32": common + ["--precision", "fp32"],  # AutoAttack always runs in fp32: timed once, here
        "tuned": common
        + BENCH_TUNED
        + ["--benches", "pgd_at,reversal" if a.tiny else "pgd_at,pgd_at_ssl,fgsm_rs,reversal"],
    }  # the last --benches wins
    paths = {name: a.work / f"bench-{name}.json" for name in configs}
    for p in paths.values():
        p.unlink(missing_ok=True)
    calls = [argv + ["--json", str(paths[name])] for name, argv in configs.items()]
    code = (
        "import sys; sys.path.insert(0, 'experiments'); import bench\n"
        f"for argv in {calls!r}:\n    print('[gpu-run] bench.py', *argv, flush=True); bench.main(argv)"
    )
    rc, text, cut = run_logged([sys.executable, "-c", code], budget)
    out: dict[str, Any] = {"returncode": rc, "cut": cut or rc != 0}
    reports: dict[str, Any] = {}
    chunks = text.split("[gpu-run] bench.py")[1:]
    for i, (name, argv) in enumerate(configs.items()):
        rec: dict[str, Any] = {"command": " ".join(["python experiments/bench.py", *argv])}
        if paths[name].is_file():
            reports[name] = json.loads(paths[name].read_text())
            rec["device_name"] = reports[name].get("device_name")
            rec["results"] = {
                k: {"images_per_s": v["images_per_s"], "ratio_to_floor": v.get("ratio_to_floor")}
                for k, v in reports[name]["results"].items()
            }
            rev = reports[name]["results"].get("reversal", {}).get("reversal")
            if rev:
                rec["results"]["reversal"]["setting"] = f"{rev['steps']} steps x {rev['n_views']} views"
        else:  # cut at the budget or failed: the benches it printed before
            lines = chunks[i].splitlines() if i < len(chunks) else []
            rec["results"] = {
                ln.split()[1].rstrip(":"): {"images_per_s": float(ln.split()[2])}
                for ln in lines
                if ln.startswith("[bench] ") and " images/s" in ln
            }
        out[name] = rec
    (a.out / "bench.json").write_text(json.dumps(reports, indent=2, default=str))
    return out


def plan_epochs(run: Run, budget: float, n_train: int = 50000) -> int:
    """Epochs whose one-cycle schedule ends inside ``budget``, from the tuned bench's joint-recipe rate."""
    if run.args.epochs:
        return run.args.epochs
    if run.args.tiny:
        return 2
    rate = ((run.results.get("bench") or {}).get("tuned", {}).get("results", {}).get("pgd_at_ssl") or {}).get(
        "images_per_s"
    )
    if not rate:
        return 30  # the recipe's own; max_time still cuts it
    return int(max(1, min(30, (budget - 45) * 0.9 * rate / n_train)))  # 45 s: start-up and validation


def train(run: Run, budget: float) -> dict:
    a = run.args
    if "setup" not in run.results:
        raise RuntimeError("no data: the setup stage failed")
    epochs = plan_epochs(run, budget)
    root = a.work / "logs"
    max_time = max(5, int(budget - 30)) if not a.tiny else 5  # the rest: start-up and the last checkpoint
    cmd = [
        sys.executable,
        "-m",
        "lightning_modules.cli",
        "fit",
        "--config",
        "experiments/cifar10/fast_recipe.yaml",
        "--data.init_args.data_dir",
        run.results["setup"]["data_dir"],
        "--trainer.default_root_dir",
        str(root),
        "--trainer.max_time",
        f"00:{max_time // 3600:02d}:{max_time // 60 % 60:02d}:{max_time % 60:02d}",
        "--trainer.max_epochs",
        str(epochs),
        "--trainer.enable_progress_bar",
        "false",
    ]  # a bar would fill the log
    if a.tiny:
        cmd += [
            "--model.init_args.backbone",
            "small_cnn",
            "--model.init_args.backbone_kwargs",
            "{width: 8}",
            "--model.init_args.attack.steps",
            "2",
            "--model.init_args.inference.val_attack_steps",
            "2",
            "--data.init_args.batch_size",
            "32",
            "--data.init_args.eval_batch_size",
            "16",
            "--data.init_args.strict_counts",
            "false",
            "--data.init_args.n_examples",
            "16",
            "--trainer.precision",
            "32-true",
            "--trainer.accelerator",
            "cpu",
            "--trainer.limit_train_batches",
            "4",
        ]
    t0 = time.monotonic()
    rc, text, cut = run_logged(cmd, budget + 20, env={"WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"})
    wall = time.monotonic() - t0
    ckpts = sorted(root.glob("checkpoints/**/last*.ckpt"), key=lambda p: p.stat().st_mtime)
    out = {
        "command": " ".join(["lightning", *cmd[3:]]).replace(str(a.work), "WORK"),
        "epochs_planned": epochs,
        "max_time_s": max_time,
        "wall_s": round(wall, 1),
        "returncode": rc,
        "cut": cut or rc != 0,
    }
    if not ckpts:
        raise RuntimeError(f"training left no last.ckpt under {root} (return code {rc}, killed at budget: {cut})")
    run.ckpt = ckpts[-1]
    ck = torch.load(run.ckpt, map_location="cpu", weights_only=True)
    out.update(
        checkpoint_epoch=ck.get("epoch"),
        global_step=ck.get("global_step"),
        stopped_by_max_time="Time limit reached" in text,
    )
    return out


def load_module(run: Run):
    """The trained ReversalModule, from the checkpoint's hyperparameters (weights_only, fp32, eval mode)."""
    from lightning_modules import ReversalModule
    from lightning_modules.settings import upgrade_hparams

    if run.module is None:
        if run.ckpt is None:
            raise RuntimeError("no trained checkpoint: the train stage failed")
        ck = torch.load(run.ckpt, map_location="cpu", weights_only=True)
        run.hparams = {k: v for k, v in ck["hyper_parameters"].items() if not k.startswith("_")}  # _class_path
        hp = upgrade_hparams(run.hparams)
        m = ReversalModule(**{**hp, "speed": {**(hp.get("speed") or {}), "compile": False}})
        m.load_state_dict(ck["state_dict"])
        run.module = m.to(run.args.device).eval()
    return run.module


def weights(run: Run, budget: float) -> dict:
    from lightning_modules.shards import save_shards

    m = load_module(run)
    extra = {
        "hyper_parameters": run.hparams,
        "commit": run.results["meta"]["commit"],
        "train": {k: run.results["train"].get(k) for k in ("checkpoint_epoch", "global_step", "command")},
    }
    names = save_shards(m.state_dict(), run.args.out, extra=extra)
    return {
        "files": names,
        "bytes": [(run.args.out / n).stat().st_size for n in names],
        "load": "lightning_modules.shards.module_from_shards(folder)",
    }


def test_images(run: Run, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    import numpy as np

    from datamodules.cifar import CIFAR10DataModule

    dm = CIFAR10DataModule(data_dir=run.results["setup"]["data_dir"], strict_counts=not run.args.tiny)
    x, y = dm.load_split("test")
    x, y = torch.as_tensor(np.asarray(x[:n])), torch.as_tensor(np.asarray(y[:n])).long()
    return x.to(run.args.device).float().div_(255), y.to(run.args.device)


def grid(run: Run, budget: float) -> dict:
    from torchvision.utils import save_image

    from callbacks.images import reversal_grid

    m = load_module(run)
    x, y = test_images(run, 8)
    x = m._prep(x)
    x_adv = m.attack(x, y)
    x_rev = m.reverse(x_adv)
    save_image(reversal_grid(x, x_adv, x_rev), run.args.out / "grid.png")
    return {"file": "grid.png", "rows": "clean, PGD-20 8/255, reversed, |attack|, |reversal| (rescaled)"}


def evaluate(run: Run, budget: float, attacks: list[str], n: int, **cfg_kw: Any) -> dict:
    """``RobustEvaluator`` on the first ``n`` test images; stops between rows once ``budget`` is spent."""
    from lightning_modules.attacks.adaptive import ReversalFns
    from lightning_modules.evaluation import EvalConfig, EvaluationStopped, RobustEvaluator

    a = run.args
    m = load_module(run)
    cfg = EvalConfig(
        threat_models={"Linf": "8/255"},
        attacks=attacks,
        draws=a.draws,
        composition=[],
        steps=20,
        eps_sweep=[],
        attack_steps_sweep=[],
        eot_sweep=[],
        reversal_steps_sweep=[],
        standard_model=False,
        **cfg_kw,
    )
    end = time.monotonic() + budget
    fns = ReversalFns.from_module(m, **({"steps": a.reversal_steps} if a.reversal_steps else {}))
    ev = RobustEvaluator.for_reversal(
        fns, cfg, should_stop=lambda: time.monotonic() > end, log=lambda s: print(s, flush=True)
    )
    x, y = test_images(run, n)
    stopped = False
    try:
        ev.evaluate(m._prep(x), y, a.eval_batch)
    except EvaluationStopped:
        stopped = True
        print(f"[gpu-run] evaluation stopped at its budget of {budget:.0f} s (between two rows)", flush=True)
    s = ev.summary()
    rows = [
        {
            "label": r["label"],
            "attack": r["attack"],
            "without": r["without"],
            "with": r["with"],
            "with_mean": r.get("with_mean"),
            "n": r["n"],
            "time_s": r["time_s"],
        }
        for r in s["rows"]
    ]
    return {
        "n_requested": n,
        "n_reached": s["n_examples"],
        "batch_size": a.eval_batch,
        "draws": a.draws,
        "reversal": {k: v for k, v in vars(fns.cfg).items() if k in ("steps", "n_views", "eps", "views")},
        "cut": stopped,
        "clean": {k: s["clean"].get(k) for k in ("without", "with", "with_mean", "n", "time_s")},
        "rows": rows,
        "worst_case": s["worst_case"],
        "reliable": s["reliable"],
        "sanity": [{k: c.get(k) for k in ("name", "passed", "detail")} for c in s["sanity"]],
        "config": {
            k: v
            for k, v in s["meta"]["config"].items()
            if k in ("attacks", "draws", "steps", "apgd_steps", "eot", "adaptive_n", "judge_draws")
        },
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
    tiny = a.tiny
    run.stage("setup", a.total_seconds, lambda b: setup(run, b))
    run.stage("bench", a.bench_seconds, lambda b: bench(run, b), reserve=a.train_seconds + a.eval_seconds)
    run.stage("train", a.train_seconds, lambda b: train(run, b), reserve=a.eval_seconds / 2)
    run.stage("weights", 60, lambda b: weights(run, b), always=True)
    run.stage("grid", 60, lambda b: grid(run, b), always=True)
    # tiny: APGD-CE for AutoAttack (an untrained tiny model's robust points make Square run all its queries)
    run.stage(
        "eval",
        a.eval_seconds,
        lambda b: evaluate(run, b, ["pgd", "apgd-ce" if tiny else "autoattack"], a.n_eval),
        reserve=a.adaptive_seconds / 2,
    )
    run.stage(
        "adaptive",
        a.adaptive_seconds,
        lambda b: evaluate(
            run,
            b,
            [a.adaptive_attack],
            a.n_adaptive,
            adaptive_n=a.n_adaptive,
            apgd_steps=5 if tiny else 20,
            eot=1 if tiny else 4,
            judge_draws=1,
        ),
    )
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
