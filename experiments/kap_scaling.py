#!/usr/bin/env python
"""KAP scaling study: clean, Gaussian-noise, PGD and AutoAttack accuracy against model size
(depth x width), with and without kernel average pooling, on CIFAR-10 (and CIFAR-100).

Each (dataset, depth, width, KAP or not) of the profile's grid trains a :class:`ReversalModule` (Gaussian-noise
training, as KAP models are trained; ``--training pgd``: adversarial), then measures on the first test images
the accuracy clean, under ``N(0, noise_eval^2)`` pixel noise, under PGD (L-inf ``--eps``) and standard AutoAttack.
KAP (window 3) follows every conv-BN-ReLU of stages 2-3 of ``small_cnn``, every block of groups 2-3 of
``wide_resnet``; it has no parameters, so both variants of a size share the x value. Writes ``scaling.json``
(after each point: a rerun skips finished ones), ``scaling.md`` and ``kap_scaling.png`` (accuracy against
parameters, a panel per metric) to ``--out`` (``results/kap_scaling/<profile>``), and logs to offline W&B unless
``WANDB_MODE=disabled``. Profiles: ``cpu`` (small_cnn, CIFAR-10, ~15 min on 2 cores), ``gpu`` (wide_resnet,
CIFAR-10 and CIFAR-100, full training set), ``tiny`` (a few steps: the test).

    python experiments/kap_scaling.py --profile cpu --data-dir data     # make kap-scaling
    python experiments/kap_scaling.py --profile gpu --data-dir data     # make kap-scaling PROFILE=gpu
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lightning_modules.evaluation.report import md_table, pyplot, save_figure  # noqa: E402
from lightning_modules.util import atomic_write_text  # noqa: E402

METRICS = ("clean", "noise", "pgd", "autoattack")


@dataclasses.dataclass
class Profile:
    """One grid and its training / evaluation budget."""

    backbone: str
    depths: tuple[int, ...]
    widths: tuple[int, ...]
    datasets: tuple[str, ...] = ("cifar10",)
    epochs: int = 1
    max_steps: int = -1
    train_subset: Optional[int] = None
    batch_size: int = 128
    lr: float = 0.05
    n_eval: int = 500
    n_autoattack: int = 50
    pgd_steps: int = 10


_GPU_BUDGET = dict(epochs=30, batch_size=256, lr=0.2, n_eval=1000, n_autoattack=1000, pgd_steps=20)
PROFILES = {
    "cpu": Profile("small_cnn", (1, 2), (8, 16), epochs=1, train_subset=10_000, n_eval=500, n_autoattack=32),
    "gpu": Profile("wide_resnet", (10, 16, 22, 28), (1, 2, 4, 8), ("cifar10", "cifar100"), **_GPU_BUDGET),
    "tiny": Profile("small_cnn", (1, 2), (4,), max_steps=2, batch_size=8, n_eval=8, n_autoattack=4, pgd_steps=2),
}


def backbone_kwargs(profile: Profile, depth: int, width: int, kap: bool) -> dict[str, Any]:
    """The backbone's size arguments and, with ``kap``, the KAP placement (see the module docstring)."""
    if profile.backbone == "small_cnn":
        kw: dict[str, Any] = {"depth": depth, "width": width}
        # body = stage 1 (3 depth modules + pool), stage 2, stage 3: the ReLU of every conv of stages 2-3
        relus = [3 * depth + 1 + 3 * i + 2 for i in range(depth)] + [6 * depth + 2 + 3 * i + 2 for i in range(depth)]
        after = [f"body.{i}" for i in relus]
    else:
        kw = {"depth": depth, "widen": width}
        n = (depth - 4) // 6
        after = [f"layer{g}.{i}" for g in (2, 3) for i in range(n)]
    if kap:
        kw["kap"] = {"window": 3, "after": after}
    return kw


def datamodule(name: str, data_dir: str, profile: Profile, seed: int):
    from datamodules import CIFAR10DataModule, CIFAR100DataModule

    cls = CIFAR10DataModule if name == "cifar10" else CIFAR100DataModule
    sizes = dict(batch_size=profile.batch_size, eval_batch_size=min(500, profile.n_eval), n_examples=profile.n_eval)
    strict = profile.train_subset is None and profile.max_steps < 0
    return cls(data_dir=data_dir, train_subset=profile.train_subset, seed=seed, strict_counts=strict, **sizes)


def train(key: dict[str, Any], profile: Profile, args: argparse.Namespace):
    """Train one grid point; returns the module (eval mode) and the data module."""
    import lightning.pytorch as pl

    from lightning_modules.methods.module import ReversalModule

    pl.seed_everything(args.seed, verbose=False)
    dm = datamodule(key["dataset"], args.data_dir, profile, args.seed)
    noise = args.noise if args.training == "standard" else 0.0
    attack = dict(mode=args.training, noise_std=noise, eps=args.eps, alpha=args.eps / 4, steps=args.train_steps)
    kw = dict(ssl=dict(weight=0.0), optim=dict(lr=profile.lr, schedule="onecycle"), inference=dict(val_attack_steps=0))
    kw.update(attack=attack, speed=dict(train_progress_bar=False))
    kw["num_classes"] = 100 if key["dataset"] == "cifar100" else 10
    size = backbone_kwargs(profile, key["depth"], key["width"], key["kap"])
    model = ReversalModule(backbone=profile.backbone, normalization=key["dataset"], backbone_kwargs=size, **kw)
    quiet = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    budget = dict(max_epochs=profile.epochs, max_steps=profile.max_steps, limit_val_batches=0, num_sanity_val_steps=0)
    trainer = pl.Trainer(accelerator=args.device, devices=1, precision=args.precision, **budget, **quiet)
    trainer.fit(model, datamodule=dm)
    dm.setup("test")
    return model.eval(), dm


def evaluate(model, dm, profile: Profile, args: argparse.Namespace) -> dict[str, float]:
    """Clean, noise, PGD and AutoAttack accuracy on the first test images."""
    from lightning_modules.attacks.autoattack import autoattack
    from lightning_modules.attacks.core import frozen_params, pgd

    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(args.seed)
    hits, seen = dict.fromkeys(METRICS, 0), dict.fromkeys(METRICS, 0)
    with frozen_params(model):
        for x, y, idx in dm.test_dataloader():
            x, y = model._prep(x.to(device)), y.to(device)
            with torch.no_grad():
                hits["clean"] += int((model.model_fn(x).argmax(1) == y).sum())
                noisy = (x + args.noise_eval * torch.randn(x.shape, generator=gen, device=device)).clamp(0, 1)
                hits["noise"] += int((model.model_fn(noisy).argmax(1) == y).sum())
            x_adv = pgd(model.model_fn, x, y, args.eps, args.eps / 4, profile.pgd_steps)
            with torch.no_grad():
                hits["pgd"] += int((model.model_fn(x_adv).argmax(1) == y).sum())
            for m in ("clean", "noise", "pgd"):
                seen[m] += len(y)
            todo = max(0, profile.n_autoattack - seen["autoattack"])
            if todo:
                xa = autoattack(model.model_fn, x[:todo], y[:todo], eps=args.eps, norm="Linf", seed=args.seed)
                with torch.no_grad():
                    hits["autoattack"] += int((model.model_fn(xa).argmax(1) == y[:todo]).sum())
                seen["autoattack"] += len(xa)
    return {m: hits[m] / max(1, seen[m]) for m in METRICS} | {f"n_{m}": seen[m] for m in ("clean", "autoattack")}


def point_name(key: dict[str, Any]) -> str:
    return f"{key['dataset']}/d{key['depth']}/w{key['width']}/{'kap' if key['kap'] else 'plain'}"


def markdown(records: list[dict[str, Any]], title: str) -> str:
    header = ["dataset", "depth", "width", "KAP", "params", "clean", "noise", "PGD", "AutoAttack", "train s"]
    rows = []
    for r in sorted(records, key=lambda r: (r["dataset"], r["kap"], r["params"])):
        acc, kap = [f"{100 * r[m]:.1f}" for m in METRICS], "yes" if r["kap"] else "no"
        rows.append([r["dataset"], r["depth"], r["width"], kap, f"{r['params']:,}", *acc, f"{r['train_seconds']:.0f}"])
    return "\n".join([f"### {title}", "", *md_table(header, rows, "lrrlrrrrrr")]) + "\n"


def plot(records: list[dict[str, Any]], path: Path, title: str) -> None:
    """Accuracy against parameter count, one panel per metric, a line per dataset x variant."""
    from matplotlib.ticker import NullFormatter

    fig, axes = pyplot().subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.4), squeeze=False)
    params = sorted({r["params"] for r in records})
    variants = sorted({(r["dataset"], r["kap"]) for r in records})
    for ax, m in zip(axes[0], METRICS):
        for ds, kap in variants:
            pts = sorted((r["params"], 100 * r[m]) for r in records if r["dataset"] == ds and r["kap"] == kap)
            style = dict(marker="o", linestyle="-") if kap else dict(marker="s", linestyle="--")
            ax.plot([p for p, _ in pts], [a for _, a in pts], **style, label=f"{ds} {'KAP' if kap else 'no KAP'}")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a short log axis overlap
        ax.set_xticks(params, [f"{p / 1e3:.0f}k" for p in params], rotation=45)
        ax.set_xlabel("parameters")
        ax.set_title(m if m != "noise" else "Gaussian noise")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (%)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def log_wandb(records: list[dict[str, Any]], png: Path, args: argparse.Namespace) -> None:
    if os.environ.get("WANDB_MODE", "").lower() == "disabled":
        return
    import wandb

    kw = dict(dir=args.wandb_dir, mode="offline", config=vars(args), reinit=True)
    run = wandb.init(project="ssl-reversal", name=f"kap-scaling-{args.profile}", **kw)
    cols = ["dataset", "depth", "width", "kap", "params", *METRICS]
    table = wandb.Table(columns=cols, data=[[r[c] for c in cols] for r in records])
    run.log({"kap_scaling/table": table, "kap_scaling/plot": wandb.Image(str(png))})
    run.finish()


def parse(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = p.add_argument
    add("--profile", choices=sorted(PROFILES), default="cpu")
    add("--data-dir", default="data")
    add("--out", default=None, help="default: results/kap_scaling/<profile>")
    add("--datasets", default=None, help="comma-separated subset of cifar10,cifar100 (default: the profile's)")
    add("--device", default=None, help="cpu or cuda (default: cuda for the gpu profile, else cpu)")
    add("--precision", default="32-true")
    training_help = "standard = Gaussian-noise training (--noise); pgd = PGD-AT at --eps"
    add("--training", choices=("standard", "pgd"), default="standard", help=training_help)
    add("--noise", type=float, default=0.1, help="training noise std (pixels in [0, 1])")
    add("--noise-eval", type=float, default=0.1, help="noise std of the Gaussian-noise accuracy")
    add("--eps", type=float, default=2 / 255, help="L-inf budget of PGD and AutoAttack ([0, 1] units)")
    add("--train-steps", type=int, default=5, help="PGD steps of --training pgd")
    add("--seed", type=int, default=0)
    add("--wandb-dir", default="logs")
    args = p.parse_args(argv)
    if args.noise <= 0 and args.training == "standard":
        p.error(f"--noise must be > 0 for Gaussian-noise training, got {args.noise}")
    if not 0 <= args.eps <= 1:
        p.error(f"--eps is in [0, 1] units (8/255 = 0.0314), got {args.eps}")
    args.device = args.device or ("cuda" if args.profile == "gpu" else "cpu")
    args.out = Path(args.out or REPO / "results" / "kap_scaling" / args.profile)
    return args


def main(argv: Optional[list[str]] = None) -> list[dict[str, Any]]:
    args = parse(argv)
    profile = PROFILES[args.profile]
    datasets = tuple(args.datasets.split(",")) if args.datasets else profile.datasets
    unknown = set(datasets) - {"cifar10", "cifar100"}
    if unknown:
        raise SystemExit(f"unknown dataset(s) {sorted(unknown)}; choose from cifar10, cifar100")
    store = args.out / "scaling.json"
    done: dict[str, dict[str, Any]] = json.loads(store.read_text())["points"] if store.is_file() else {}
    skip = ("out", "wandb_dir")
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in skip}
    points = itertools.product(datasets, profile.depths, profile.widths, (False, True))
    grid = [{"dataset": ds, "depth": d, "width": w, "kap": kap} for ds, d, w, kap in points]
    t_start = time.perf_counter()
    for i, key in enumerate(grid, 1):
        name = point_name(key)
        if name in done and done[name].get("settings") == settings:
            print(f"[{i}/{len(grid)}] {name}: stored, skipped")
            continue
        t0 = time.perf_counter()
        model, dm = train(key, profile, args)
        t1 = time.perf_counter()
        acc = evaluate(model, dm, profile, args)
        params = sum(p.numel() for p in model.classifier.parameters())
        seconds = {"train_seconds": t1 - t0, "eval_seconds": time.perf_counter() - t1}
        rec = done[name] = {**key, "params": params, **acc, **seconds, "settings": settings}
        atomic_write_text(store, json.dumps({"profile": dataclasses.asdict(profile), "points": done}, indent=2))
        accs = ", ".join(f"{m} {100 * acc[m]:.1f}%" for m in METRICS)
        times = f"(train {rec['train_seconds']:.0f} s, eval {rec['eval_seconds']:.0f} s)"
        print(f"[{i}/{len(grid)}] {name}: {params:,} params, {accs} {times}", flush=True)
    records = [done[point_name(k)] for k in grid]
    title = f"KAP scaling ({args.profile}: {profile.backbone}, {args.training} training, noise {args.noise_eval}, "
    title += f"L-inf eps {args.eps * 255:.3g}/255)"
    md = markdown(records, title)
    atomic_write_text(args.out / "scaling.md", md)
    plot(records, args.out / "kap_scaling.png", title)
    print(md)
    print(f"wrote {args.out}/scaling.json, scaling.md, kap_scaling.png ({time.perf_counter() - t_start:.0f} s)")
    log_wandb(records, args.out / "kap_scaling.png", args)
    return records


if __name__ == "__main__":
    main()
