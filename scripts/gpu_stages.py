"""The stages of ``scripts/gpu_run.py`` up to the trained weights: setup, bench, train, weights. Each takes the
run and its budget (s) and returns a JSON-able dict (see :meth:`scripts.run_tools.Run.stage`)."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

from lightning_modules.util import atomic_write_text
from scripts.gpu_results import bench_rate
from scripts.run_tools import Run, load_module, run_logged, synthetic_cifar10
from scripts.shards import save_shards

NEEDED = ("kornia", "pyautoattack", "jsonargparse", "docstring_parser", "typeshed_client")
VERSIONS = ("torch", "torchvision", "lightning", "torchmetrics", "numpy", "jsonargparse", "kornia", "pyautoattack")
BENCH_TUNED = "--precision bf16 --channels-last --views fast --ema 0.998".split()
BENCH_TINY = "--tiny --seconds 0.2 --windows 1 --rev-steps 2 --aa-n 4 --n-train 64 --benches"
TRAIN_TINY = (
    "--model.init_args.backbone small_cnn --model.init_args.backbone_kwargs '{width: 8}' "
    "--model.init_args.attack.steps 2 --model.init_args.inference.val_attack_steps 2 "
    "--data.init_args.batch_size 32 --data.init_args.eval_batch_size 16 --data.init_args.strict_counts false "
    "--data.init_args.n_examples 16 --trainer.precision 32-true --trainer.accelerator cpu "
    "--trainer.limit_train_batches 4"
)


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
        pip = "-m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target".split()
        rc, text, _ = run_logged([sys.executable, *pip, str(site), *map(str, wheels)], budget)
        if rc != 0:
            raise RuntimeError(f"pip install of {a.wheels}/*.whl failed ({rc}): {text[-500:]}")
        sys.path.insert(0, str(site))
        importlib.invalidate_caches()
        os.environ["PYTHONPATH"] = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        out["installed"] = [w.name for w in wheels]
    out["versions"] = {name: version(name) for name in VERSIONS}
    out["data_dir"] = str(prepare_data(a, budget))
    return out


def version(name: str) -> Optional[str]:
    """The installed version of ``name`` (None: not installed)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def prepare_data(a: argparse.Namespace, budget: float) -> Path:
    if a.data_dir:
        return Path(a.data_dir)
    data = a.work / ("data_tiny" if a.tiny else "data")  # never one for the other
    if (data / "cifar-10-batches-py" / "test_batch").is_file():
        return data
    if a.tiny:  # the same on every machine, with or without the pack
        return synthetic_cifar10(data)
    pack = Path(a.pack)
    if not pack.is_file():
        raise FileNotFoundError(
            f"no CIFAR-10 pack at {pack}: run `make device-wheels` (copies it to shared_pack/) "
            "and name shared_pack in the device call's carry, or pass --data-dir"
        )
    script = pack.with_name("cifar10_from_pack.py")
    if not script.is_file():
        raise FileNotFoundError(f"{script} is missing beside the pack: `make device-wheels` copies both")
    rc, text, _ = run_logged([sys.executable, str(script), "--out", str(data), "--pack", str(pack)], budget)
    if rc != 0:
        raise RuntimeError(f"unpacking {pack} failed ({rc}): {text[-500:]}")
    return data


def bench(run: Run, budget: float) -> dict:
    """Both configurations in one process (one start-up), killed at the budget; a cut keeps what finished."""
    a = run.args
    common = ["--device", a.device]
    if a.tiny:
        common += [*BENCH_TINY.split(), "pgd_at,fgsm_rs,reversal,autoattack"]
    else:
        common += "--seconds 3 --windows 3 --warmup 3 --aa-n 250".split()
    # the tuned settings first (the targets and the epoch plan read them), each set most needed first: a cut at
    # the budget loses the tail (fp32 FGSM-RS and AutoAttack on a random-init model); the last --benches wins
    tuned = "pgd_at,reversal" if a.tiny else "pgd_at,reversal,pgd_at_ssl,fgsm_rs"
    fp32 = [] if a.tiny else ["--benches", "pgd_at,reversal,pgd_at_ssl,fgsm_rs,autoattack"]  # AutoAttack: fp32 only
    configs = {"tuned": [*common, *BENCH_TUNED, "--benches", tuned], "fp32": [*common, "--precision", "fp32", *fp32]}
    paths = {name: a.work / f"bench-{name}.json" for name in configs}
    for p in paths.values():
        p.unlink(missing_ok=True)
    calls = [argv + ["--json", str(paths[name])] for name, argv in configs.items()]
    code = (
        "import sys; sys.path.insert(0, 'experiments'); import bench\n"
        f"for argv in {calls!r}:\n    print('[gpu-run] bench.py', *argv, flush=True); bench.main(argv)"
    )
    rc, _, cut = run_logged([sys.executable, "-c", code], budget)
    out: dict[str, Any] = {"returncode": rc, "cut": cut or rc != 0}
    reports: dict[str, Any] = {}
    for name, argv in configs.items():  # bench.py rewrites its JSON after every benchmark: a cut keeps those
        rec: dict[str, Any] = {"command": " ".join(["python experiments/bench.py", *argv]), "results": {}}
        if paths[name].is_file():
            rep = reports[name] = json.loads(paths[name].read_text())
            rec.update(device_name=rep.get("device_name"), complete=rep.get("complete", False))
            rec["results"] = {
                k: {"images_per_s": v["images_per_s"], "ratio_to_floor": v.get("ratio_to_floor")}
                for k, v in rep["results"].items()
            }
            rev = rep["results"].get("reversal", {}).get("reversal")
            if rev:
                rec["results"]["reversal"]["setting"] = f"{rev['steps']} steps x {rev['n_views']} views"
        out[name] = rec
    atomic_write_text(a.out / "bench.json", json.dumps(reports, indent=2, default=str))
    return out


def plan_epochs(run: Run, budget: float, n_train: int = 50000) -> int:
    """Epochs whose one-cycle schedule ends inside ``budget``, from the tuned bench's joint-recipe rate."""
    if run.args.epochs:
        return run.args.epochs
    if run.args.tiny:
        return 2
    rate = bench_rate(run.results, "tuned", "pgd_at_ssl")
    if not rate and bench_rate(run.results, "tuned", "pgd_at"):  # + 2 views: 13 passes instead of 11
        rate = bench_rate(run.results, "tuned", "pgd_at") * 11 / 13
    if not rate:
        return 30  # the recipe's own; max_time still cuts it
    return int(max(1, min(30, (budget - 45) * 0.9 * rate / n_train)))  # 45 s: start-up and validation


def train(run: Run, budget: float) -> dict:
    a = run.args
    if "setup" not in run.results:
        raise RuntimeError("no data: the setup stage failed")
    epochs = plan_epochs(run, budget)
    root = a.work / "logs"
    # every run trains afresh: an earlier run's checkpoints in the scratch folder would make the fit refuse
    # the folder, and then be taken for this run's
    shutil.rmtree(root / "checkpoints", ignore_errors=True)
    max_time = max(5, int(budget - 30)) if not a.tiny else 5  # the rest: start-up and the last checkpoint
    hms = f"00:{max_time // 3600:02d}:{max_time // 60 % 60:02d}:{max_time % 60:02d}"
    cmd = [sys.executable, "-m", "lightning_modules.cli", "fit", "--config", "experiments/cifar10/fast_recipe.yaml"]
    cmd += ["--data.init_args.data_dir", run.results["setup"]["data_dir"], "--trainer.default_root_dir", str(root)]
    cmd += ["--trainer.max_time", hms, "--trainer.max_epochs", str(epochs)]
    cmd += ["--trainer.enable_progress_bar", "false"]  # a bar would fill the log
    cmd += shlex.split(TRAIN_TINY if a.tiny else "") + shlex.split(a.train_args)
    t0 = time.monotonic()
    rc, text, cut = run_logged(cmd, budget + 20, env={"WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"})
    command = " ".join(["lightning", *cmd[3:]]).replace(str(a.work), "WORK")
    out = dict(command=command, epochs_planned=epochs, max_time_s=max_time, wall_s=round(time.monotonic() - t0, 1))
    out.update(returncode=rc, cut=cut or rc != 0)
    ckpts = sorted(root.glob("checkpoints/**/last*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not ckpts:
        raise RuntimeError(f"training left no last.ckpt under {root} (return code {rc}, killed at budget: {cut})")
    run.ckpt = ckpts[-1]
    ck = torch.load(run.ckpt, map_location="cpu", weights_only=True)
    out.update(checkpoint_epoch=ck.get("epoch"), global_step=ck.get("global_step"))
    out["stopped_by_max_time"] = "Time limit reached" in text
    return out


def weights(run: Run, budget: float) -> dict:
    m, out = load_module(run), run.args.out
    extra = {
        "hyper_parameters": run.hparams,
        "commit": run.results["meta"]["commit"],
        "train": {k: run.results["train"].get(k) for k in ("checkpoint_epoch", "global_step", "command")},
    }
    names = save_shards(m.state_dict(), out, extra=extra)
    sizes = [(out / n).stat().st_size for n in names]
    return {"files": names, "bytes": sizes, "load": "scripts.shards.module_from_shards(folder)"}
