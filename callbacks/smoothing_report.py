"""Randomized-smoothing certification during ``lightning test``: certified accuracy per L2 radius,
abstention, PREDICT accuracy and time, written as JSON, Markdown and a plot (and logged to W&B).

:class:`SmoothingCertification` runs :func:`~lightning_modules.evaluation.smoothing.certify` (and
``predict``) on every test batch with noise ``sigma`` (default: the model's training ``noise_std``) and
writes ``certify.json`` (settings, the accuracies, seconds per image, per example ``idx, y, pred,
radius``), ``certify.md`` (printed too) and ``certified_accuracy.png``; metrics ``test/certified_acc@<r>``,
``test/abstain``, ``test/smoothed_predict_acc``. Each batch's noise is seeded from ``seed`` + its first
index, so results do not depend on the batch order; results are kept by ``idx``, so a distributed
sampler's repeats count once.

Example (config)::

    trainer:
      callbacks+:
        - class_path: callbacks.SmoothingCertification
          init_args: {sigma: 0.25, n: 100000, radii: [0, 0.25, 0.5, 0.75, 1.0]}
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch

from lightning_modules.evaluation.smoothing import ABSTAIN, SmoothingConfig, certified_accuracy, certify, predict
from lightning_modules.util import atomic_write_text, module_inputs

from .predictions import merge_predictions

RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


def markdown_table(report: dict[str, Any]) -> str:
    """Certified accuracy per radius, abstention, PREDICT and time as a Markdown table."""
    from lightning_modules.evaluation.report import md_table

    s, radii = report["settings"], list(report["certified_accuracy"])
    title = f"### Randomized smoothing (sigma {s['sigma']}, n0 {s['n0']}, n {s['n']}, alpha {s['alpha']}, "
    title += f"{report['n_examples']} images)"

    def pct(v: Optional[float]) -> str:
        return "n/a" if v is None else f"{100 * v:.2f}%"

    cells = [pct(v) for v in [*report["certified_accuracy"].values(), report["abstain"]]]
    cells += [pct(report.get("predict_accuracy")), pct(report.get("predict_abstain"))]
    cells.append(f"{report['seconds_per_image']:.3g}")
    header = [*(f"r = {r}" for r in radii), "abstain", "PREDICT acc", "PREDICT abstain", "s / image"]
    return "\n".join([title, "", *md_table(header, [cells], "r" * len(header))]) + "\n"


def plot_certified(radius: torch.Tensor, correct: torch.Tensor, radii: list[float], sigma: float, path: Path) -> None:
    """Certified accuracy against the radius (a step curve, the requested radii marked)."""
    from lightning_modules.evaluation.report import pyplot, save_figure

    top = max(max(radii), float(radius.max()) if len(radius) else 0.0) * 1.05 + 1e-6
    grid = torch.linspace(0, top, 200)
    acc = [float((correct & (radius >= r)).float().mean()) for r in grid]
    fig, ax = pyplot().subplots(figsize=(5, 3.5))
    ax.plot(grid.tolist(), [100 * a for a in acc], label=f"sigma = {sigma}")
    ax.scatter(radii, [100 * float((correct & (radius >= r)).float().mean()) for r in radii], zorder=3)
    ax.set_xlabel("L2 radius")
    ax.set_ylabel("certified accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


class SmoothingCertification(pl.Callback):
    """CERTIFY (and PREDICT) on every test batch; the report at the end of the test epoch.

    Args:
        sigma: noise std; ``None`` reads the model's ``attack.noise_std`` (must be > 0).
        n0, n, alpha, batch_size, clamp: :class:`~lightning_modules.evaluation.smoothing.SmoothingConfig`.
        radii: the radii of the table.
        predict: also run PREDICT (``n`` more samples per image).
        output_dir: where the files go (default: the run's log dir + ``/certify``).
        seed: noise seed (per batch: ``seed`` + the batch's first index).
        print_table: print the Markdown table at the end.
    """

    replaces_test_attacks = True  # ReversalModule.test_step then only logs clean accuracy

    def __init__(
        self,
        sigma: Optional[float] = None,
        n0: int = 100,
        n: int = 100_000,
        alpha: float = 0.001,
        batch_size: int = 1000,
        clamp: bool = True,
        radii: tuple[float, ...] = RADII,
        predict: bool = True,
        output_dir: Optional[str] = None,
        seed: int = 0,
        print_table: bool = True,
    ) -> None:
        if sigma is not None:
            SmoothingConfig(sigma, n0, n, alpha, batch_size, clamp)  # fail early, naming the setting
        if any(r < 0 for r in radii):
            raise ValueError(f"radii must be >= 0, got {list(radii)}")
        self.settings = dict(sigma=sigma, n0=n0, n=n, alpha=alpha, batch_size=batch_size, clamp=clamp)
        self.radii = [float(r) for r in radii]
        self.predict, self.output_dir, self.seed, self.print_table = predict, output_dir, seed, print_table
        self._res: dict[str, list[torch.Tensor]] = {}
        self._seconds = 0.0

    def config_for(self, pl_module: pl.LightningModule) -> SmoothingConfig:
        s = dict(self.settings)
        if s["sigma"] is None:
            attack = getattr(pl_module, "attack_cfg", None)
            s["sigma"] = float(getattr(attack, "noise_std", 0.0) or 0.0)
            if s["sigma"] <= 0:
                raise ValueError(
                    "SmoothingCertification: sigma is not set and the model was not trained with "
                    "Gaussian noise (noise_std 0): pass --trainer.callbacks.init_args.sigma"
                )
        return SmoothingConfig(**s)

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.cfg = self.config_for(pl_module)
        self._res = {k: [] for k in ("idx", "y", "pred", "radius", "predict")}
        self._seconds = 0.0

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y, idx = module_inputs(pl_module, batch[0]), batch[1], batch[2]
        nc = pl_module.classifier.num_classes
        gen = torch.Generator(device=x.device).manual_seed(self.seed + int(idx.min()))
        was = pl_module.training
        pl_module.eval()
        t0 = time.perf_counter()
        try:
            pred, radius, _ = certify(pl_module.model_fn, x, self.cfg, nc, gen)
            pp = predict(pl_module.model_fn, x, self.cfg, nc, gen) if self.predict else torch.full_like(y, ABSTAIN)
        finally:
            pl_module.train(was)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        self._seconds += time.perf_counter() - t0
        for k, v in (("idx", idx), ("y", y), ("pred", pred), ("radius", radius), ("predict", pp)):
            self._res[k].append(v.detach())

    def _gathered(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, torch.Tensor]:
        res = {k: torch.cat(v).to(pl_module.device) for k, v in self._res.items()}
        if trainer.world_size > 1:
            res = {k: pl_module.all_gather(v).reshape(-1) for k, v in res.items()}
        return merge_predictions([res])

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._res.get("idx"):
            return
        r = self._gathered(trainer, pl_module)
        seconds = torch.tensor(self._seconds, device=pl_module.device)
        if trainer.world_size > 1:
            seconds = pl_module.all_gather(seconds).sum()
        n = len(r["idx"])
        cert = certified_accuracy(r["pred"], r["radius"], r["y"], self.radii)
        report: dict[str, Any] = {
            "settings": {**vars(self.cfg), "seed": self.seed},
            "n_examples": n,
            "certified_accuracy": {str(k): v for k, v in cert.items()},
            "abstain": float((r["pred"] == ABSTAIN).float().mean()),
            "predict_accuracy": float((r["predict"] == r["y"]).float().mean()) if self.predict else None,
            "predict_abstain": float((r["predict"] == ABSTAIN).float().mean()) if self.predict else None,
            "seconds_per_image": float(seconds) / max(1, n),
            "seconds": float(seconds),
            "per_example": {k: r[k].tolist() for k in ("idx", "y", "pred", "radius")},
        }
        for k, v in cert.items():
            pl_module.log(f"test/certified_acc@{k:g}", v, sync_dist=False, rank_zero_only=True)
        pl_module.log("test/abstain", report["abstain"], sync_dist=False, rank_zero_only=True)
        if self.predict:
            pl_module.log("test/smoothed_predict_acc", report["predict_accuracy"], sync_dist=False, rank_zero_only=True)
        if not trainer.is_global_zero:
            return
        out = Path(self.output_dir or Path(trainer.log_dir or trainer.default_root_dir) / "certify")
        md = markdown_table(report)
        js, md_path, png = out / "certify.json", out / "certify.md", out / "certified_accuracy.png"
        atomic_write_text(js, json.dumps(report, indent=2))
        atomic_write_text(md_path, md)
        plot_certified(r["radius"], r["pred"] == r["y"], self.radii, self.cfg.sigma, png)
        self.report, self.paths = report, {"json": js, "md": md_path, "png": png}
        if self.print_table:
            print(md)
        self._log_wandb(trainer, report, png)

    @staticmethod
    def _log_wandb(trainer: pl.Trainer, report: dict[str, Any], png: Path) -> None:
        for logger in trainer.loggers:
            if type(logger).__name__ != "WandbLogger":
                continue
            rows = [[float(r), a] for r, a in report["certified_accuracy"].items()]
            logger.log_table(key="test/certified_accuracy", columns=["radius", "certified_acc"], data=rows)
            logger.log_image(key="test/certified_accuracy_plot", images=[str(png)])
