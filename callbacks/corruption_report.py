"""Accuracy per corruption and severity (and after the reversal) during ``lightning test`` on a
corruption data module (several test loaders named in ``test_set_names``, e.g. ``"fog/3"``).

:class:`CorruptionReport` classifies every test batch itself (``pl_module.model_fn``), with
``reversal: true`` also ``pl_module.reverse(x)``, and at the end of the test writes to ``output_dir``
``corruption_report.json`` (per set ``n``, ``acc``, ``acc_reversed``; the corruption x severity tables
and their means), ``corruption_report.md`` (printed too) and ``corruption_heatmap.png``, and logs the
table and heat map to W&B. Results are kept by ``idx``, so a distributed sampler's repeats count once.

Example (config)::

    trainer:
      callbacks:
        - class_path: callbacks.CorruptionReport
          init_args: {output_dir: results/corruptions, reversal: true}
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch

from lightning_modules.util import atomic_write_text, module_inputs

from .predictions import merge_predictions


def _split_name(name: str) -> tuple[str, Optional[int]]:
    head, _, tail = name.rpartition("/")
    if head and tail.isdigit():
        return head, int(tail)
    return name, None


def summarize(accs: dict[str, float]) -> dict[str, Any]:
    """Tables from ``{"corruption/severity": acc}``: ``table[corruption][severity]``, means per
    corruption, per severity and overall (mean over sets, each set weighted equally)."""
    table: dict[str, dict[str, float]] = {}
    for name, a in accs.items():
        c, s = _split_name(name)
        table.setdefault(c, {})[str(s) if s is not None else "-"] = a
    per_c = {c: sum(r.values()) / len(r) for c, r in table.items()}
    sevs = sorted({s for r in table.values() for s in r}, key=lambda s: (s == "-", s))
    per_s = {s: sum(r[s] for r in table.values() if s in r) / sum(1 for r in table.values() if s in r) for s in sevs}
    mean = sum(accs.values()) / len(accs) if accs else float("nan")
    return {"table": table, "mean_per_corruption": per_c, "mean_per_severity": per_s, "mean": mean}


def markdown_table(summary: dict[str, Any], title: str) -> str:
    from lightning_modules.evaluation.report import md_table

    per_c, per_s = summary["mean_per_corruption"], summary["mean_per_severity"]
    sevs = list(per_s)
    rows = [
        [c, *(f"{100 * row[s]:.2f}" if s in row else "" for s in sevs), f"{100 * per_c[c]:.2f}"]
        for c, row in summary["table"].items()
    ]
    rows.append(["**mean**", *(f"{100 * per_s[s]:.2f}" for s in sevs), f"**{100 * summary['mean']:.2f}**"])
    table = md_table(["corruption", *(f"sev {s}" for s in sevs), "mean"], rows, "l" + "r" * (len(sevs) + 1))
    return "\n".join([f"### {title}", "", *table]) + "\n"


def heatmap(summaries: dict[str, dict[str, Any]], path: Path) -> None:
    """Save one corruption x severity panel (accuracy %) per summary side by side (matplotlib, Agg)."""
    import numpy as np

    from lightning_modules.evaluation.report import pyplot, save_figure

    items = list(summaries.items())
    first = items[0][1]
    corr, sevs = list(first["table"]), list(first["mean_per_severity"])
    size = (1.2 + 1.1 * len(sevs) * len(items) + 1.6 * len(items), 0.8 + 0.38 * len(corr))
    fig, axes = pyplot().subplots(1, len(items), figsize=size, squeeze=False)
    for ax, (title, s) in zip(axes[0], items):
        m = np.array([[100 * s["table"][c].get(v, float("nan")) for v in sevs] for c in corr])
        im = ax.imshow(m, vmin=0, vmax=100, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(sevs)), [str(v) for v in sevs])
        ax.set_yticks(range(len(corr)), corr if ax is axes[0][0] else [""] * len(corr))
        ax.set_xlabel("severity")
        ax.set_title(f"{title} (mean {100 * s['mean']:.1f}%)", fontsize=9)
        for (i, j), v in np.ndenumerate(m):
            if not math.isnan(v):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="white" if v < 50 else "black")
    fig.colorbar(im, ax=axes[0].tolist(), label="accuracy (%)", shrink=0.8)
    save_figure(fig, path)


class CorruptionReport(pl.Callback):
    """Accuracy per (corruption, severity) test loader, optionally after the reversal.

    Args:
        output_dir: where the JSON / Markdown / PNG go (default: the run's log dir + ``/corruptions``).
        reversal: also classify ``pl_module.reverse(x)`` (needs ``trainer.inference_mode: false``).
        print_table: print the Markdown tables at the end of the test.
    """

    replaces_test_attacks = True  # ReversalModule.test_step then skips its quick PGD check

    def __init__(self, output_dir: Optional[str] = None, reversal: bool = False, print_table: bool = True) -> None:
        self.output_dir, self.reversal, self.print_table = output_dir, reversal, print_table
        self._res: dict[int, dict[str, list[torch.Tensor]]] = {}
        self._last: dict[int, torch.Tensor] = {}

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._res, self._last = {}, {}

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y, idx = module_inputs(pl_module, batch[0]), batch[1], batch[2]
        was = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad():
                correct = pl_module.model_fn(x).argmax(1) == y
            res = self._res.setdefault(dataloader_idx, {"idx": [], "correct": [], "correct_rev": []})
            res["idx"].append(idx.detach().cpu())
            res["correct"].append(correct.detach().cpu())
            if self.reversal:
                if torch.is_inference_mode_enabled():
                    raise RuntimeError(
                        "CorruptionReport(reversal=true) needs gradients: set "
                        "`trainer.inference_mode: false` (the base file lightning_modules/base.yaml does)"
                    )
                with torch.enable_grad():
                    x_rev = self._reverse(pl_module, x, dataloader_idx)
                with torch.no_grad():
                    res["correct_rev"].append((pl_module.model_fn(x_rev).argmax(1) == y).detach().cpu())
        finally:
            pl_module.train(was)

    def _reverse(self, pl_module: pl.LightningModule, x: torch.Tensor, dataloader_idx: int) -> torch.Tensor:
        """The reversal of a batch. InfoNCE needs negatives, so a trailing batch of ONE image is
        reversed together with the previous batch of the same loader (as negatives only)."""
        prev = self._last.get(dataloader_idx)
        self._last[dataloader_idx] = x.detach()
        if len(x) >= 2:
            return pl_module.reverse(x)
        if prev is None or len(prev) < 1:
            raise ValueError(
                "the reversal needs at least 2 images per batch: a test set of 1 image cannot be "
                "reversed (use a larger n_examples)"
            )
        return pl_module.reverse(torch.cat([prev, x]))[len(prev) :]

    def _gather(self, trainer: pl.Trainer, pl_module: pl.LightningModule, key: str, res: dict) -> tuple[int, float]:
        idx = torch.cat(res["idx"])
        val = torch.cat(res[key]).float()
        if trainer.world_size > 1:
            idx = pl_module.all_gather(idx.to(pl_module.device)).reshape(-1).cpu()
            val = pl_module.all_gather(val.to(pl_module.device)).reshape(-1).cpu()
        val = merge_predictions([{"idx": idx, "val": val}])["val"]
        return len(val), float(val.mean()) if len(val) else float("nan")

    def _names(self, trainer: pl.Trainer, n: int) -> list[str]:
        dm = getattr(trainer, "datamodule", None)
        names = list(getattr(dm, "test_set_names", []) or [])
        return names if len(names) >= n else [f"set{i}" for i in range(n)]

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._res:
            return
        names = self._names(trainer, max(self._res) + 1)
        sets: dict[str, dict[str, float]] = {}
        for i, r in sorted(self._res.items()):
            n, a = self._gather(trainer, pl_module, "correct", r)
            sets[names[i]] = {"n": n, "acc": a}
            if self.reversal and r["correct_rev"]:
                sets[names[i]]["acc_reversed"] = self._gather(trainer, pl_module, "correct_rev", r)[1]
        acc = {k: v["acc"] for k, v in sets.items()}
        acc_rev = {k: v["acc_reversed"] for k, v in sets.items() if "acc_reversed" in v}
        summary = summarize(acc)
        report: dict[str, Any] = {"sets": sets, "no_reversal": summary}
        if acc_rev:
            report["reversal"] = summarize(acc_rev)
            rc = getattr(pl_module, "reversal_cfg", None)
            if rc is not None:
                report["reversal_config"] = {
                    k: (list(v) if isinstance(v, tuple) else v)
                    for k, v in vars(rc).items()
                    if isinstance(v, (int, float, str, bool, list, tuple))
                }
        pl_module.log("test/corruption_mean_acc", summary["mean"], sync_dist=False, rank_zero_only=True)
        if acc_rev:
            mean_rev = report["reversal"]["mean"]
            pl_module.log("test/corruption_mean_acc_reversed", mean_rev, sync_dist=False, rank_zero_only=True)
        if not trainer.is_global_zero:
            return
        out = Path(self.output_dir or Path(trainer.log_dir or trainer.default_root_dir) / "corruptions")
        out.mkdir(parents=True, exist_ok=True)
        md, panels = markdown_table(summary, "accuracy (%) without reversal"), {"no reversal": summary}
        if acc_rev:
            md += "\n" + markdown_table(report["reversal"], "accuracy (%) after reversal")
            panels["after reversal"] = report["reversal"]
        js, md_path, png = out / "corruption_report.json", out / "corruption_report.md", out / "corruption_heatmap.png"
        atomic_write_text(js, json.dumps(report, indent=2))
        atomic_write_text(md_path, md)
        heatmap(panels, png)
        self.paths = {"json": js, "md": md_path, "png": png}
        if self.print_table:
            print(md)
        self._log_wandb(trainer, sets, png)

    @staticmethod
    def _log_wandb(trainer: pl.Trainer, sets: dict[str, dict[str, float]], png: Path) -> None:
        for logger in trainer.loggers:
            if type(logger).__name__ != "WandbLogger":
                continue
            cols = ["corruption", "severity", "n", "acc", "acc_reversed"]
            rows = []
            for name, r in sets.items():
                c, s = _split_name(name)
                rows.append([c, s if s is not None else -1, r["n"], r["acc"], r.get("acc_reversed")])
            logger.log_table(key="test/corruptions", columns=cols, data=rows)
            logger.log_image(key="test/corruption_heatmap", images=[str(png)])
