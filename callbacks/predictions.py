"""Write what ``predict`` returned (the reversal's predictions and images) to one file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import BasePredictionWriter

from lightning_modules.util import atomic_torch_save


def merge_predictions(parts: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate per-batch dicts and put them in data-set order by ``idx``, dropping repeats
    (distributed samplers pad shards with repeated examples)."""
    out = {k: torch.cat([p[k].detach().cpu() for p in parts]) for k in parts[0]}
    order = torch.argsort(out["idx"], stable=True)
    out = {k: v[order] for k, v in out.items()}
    keep = torch.ones(len(out["idx"]), dtype=torch.bool)
    keep[1:] = out["idx"][1:] != out["idx"][:-1]
    return {k: v[keep] for k, v in out.items()}


def _gather_to_rank0(part: Optional[dict[str, torch.Tensor]], trainer: pl.Trainer) -> list[dict[str, torch.Tensor]]:
    """Every rank's part on global rank 0 (an empty list elsewhere), through the process group, so
    no shared file system is needed. Each rank contributes exactly once (``None`` when it has
    nothing), so no rank waits on another."""
    if trainer.world_size == 1 or not (dist.is_available() and dist.is_initialized()):
        return [part] if part is not None else []
    gathered: Optional[list] = [None] * dist.get_world_size() if trainer.is_global_zero else None
    dist.gather_object(part, gathered, dst=0)
    return [p for p in gathered or [] if p is not None]


class PredictionWriter(BasePredictionWriter):
    """Saves ``output_dir/predictions.pt``: ``idx, y, pred_clean, pred_before, pred_after`` (and with
    ``save_images`` ``x_input``, ``x_reversed``) in data-set order, gathered on rank 0 under DDP and merged
    by ``idx``; written atomically once the whole epoch succeeded, with the run's config (``run_config``,
    set by the CLI) beside it as ``config.yaml``; prints the accuracies. An existing file is kept unless
    ``overwrite`` (``--overwrite true``): the run refuses to start."""

    def __init__(
        self, output_dir: str = "results/predictions", save_images: bool = True, overwrite: bool = False
    ) -> None:
        super().__init__(write_interval="epoch")
        self.output_dir, self.save_images, self.overwrite = Path(output_dir), save_images, overwrite
        self.run_config: Optional[str] = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        target = self.output_dir / "predictions.pt"
        if stage == "predict" and not self.overwrite and trainer.is_global_zero and target.exists():
            raise FileExistsError(
                f"{target} exists (an earlier predict run's): pass --overwrite true to replace "
                "it, or move it away first"
            )

    def write_on_epoch_end(self, trainer: pl.Trainer, pl_module, predictions, batch_indices) -> None:
        preds = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        preds = [p for p in preds if isinstance(p, dict) and "idx" in p]
        if not self.save_images:
            preds = [{k: v for k, v in p.items() if not k.startswith("x_")} for p in preds]
        parts = _gather_to_rank0(merge_predictions(preds) if preds else None, trainer)
        if not trainer.is_global_zero or not parts:
            return
        merged = merge_predictions(parts)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(merged, self.output_dir / "predictions.pt")
        if self.run_config is not None:
            from lightning_modules.util import atomic_write_text

            atomic_write_text(self.output_dir / "config.yaml", self.run_config)
        y = merged["y"]
        acc = {k: (merged[k] == y).float().mean().item() for k in ("pred_clean", "pred_before", "pred_after")}
        print(
            f"predictions: {len(y)} images -> {self.output_dir / 'predictions.pt'}; accuracy clean "
            f"{acc['pred_clean']:.2%}, input (attacked) {acc['pred_before']:.2%}, "
            f"after reversal {acc['pred_after']:.2%}"
        )
