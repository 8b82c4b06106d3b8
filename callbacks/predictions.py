"""Write what ``predict`` returned (the reversal's predictions and images) to one file."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter


def merge_predictions(parts: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate per-batch dicts and put them in data-set order by ``idx``, dropping repeats
    (distributed samplers pad shards with repeated examples)."""
    out = {k: torch.cat([p[k].detach().cpu() for p in parts]) for k in parts[0]}
    order = torch.argsort(out["idx"], stable=True)
    out = {k: v[order] for k, v in out.items()}
    keep = torch.ones(len(out["idx"]), dtype=torch.bool)
    keep[1:] = out["idx"][1:] != out["idx"][:-1]
    return {k: v[keep] for k, v in out.items()}


def atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class PredictionWriter(BasePredictionWriter):
    """Saves ``output_dir/predictions.pt``: ``idx, y, pred_clean, pred_before, pred_after`` and,
    with ``save_images``, ``x_input`` and ``x_reversed``, in data-set order. Each rank writes its
    part; rank 0 merges them. Prints accuracy before and after the reversal."""

    def __init__(self, output_dir: str = "results/predictions", save_images: bool = True) -> None:
        super().__init__(write_interval="epoch")
        self.output_dir, self.save_images = Path(output_dir), save_images

    def write_on_epoch_end(self, trainer: pl.Trainer, pl_module, predictions, batch_indices) -> None:
        preds = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        preds = [p for p in preds if isinstance(p, dict) and "idx" in p]
        if not preds:
            return
        if not self.save_images:
            preds = [{k: v for k, v in p.items() if not k.startswith("x_")} for p in preds]
        self.output_dir.mkdir(parents=True, exist_ok=True)
        part = self.output_dir / f"part-rank{trainer.global_rank}.pt"
        atomic_torch_save(merge_predictions(preds), part)
        trainer.strategy.barrier("prediction_writer")
        if not trainer.is_global_zero:
            return
        parts = [torch.load(self.output_dir / f"part-rank{r}.pt", weights_only=True) for r in range(trainer.world_size)]
        merged = merge_predictions(parts)
        atomic_torch_save(merged, self.output_dir / "predictions.pt")
        for r in range(trainer.world_size):
            (self.output_dir / f"part-rank{r}.pt").unlink(missing_ok=True)
        y = merged["y"]
        acc = {k: (merged[k] == y).float().mean().item() for k in ("pred_clean", "pred_before", "pred_after")}
        print(f"predictions: {len(y)} images -> {self.output_dir / 'predictions.pt'}; accuracy clean "
              f"{acc['pred_clean']:.2%}, input (attacked) {acc['pred_before']:.2%}, after reversal {acc['pred_after']:.2%}")
