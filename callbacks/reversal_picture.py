"""The reversal in one picture: clean, attacked and reversed images, both changes, the predicted labels.

:class:`ReversalPicture` runs during ``lightning predict`` (``make reverse-cifar10 CKPT=...``): the
first images of the first batch as ``predict_step`` attacked and reversed them, drawn by the pure
function :func:`reversal_figure`, with the accuracies on every predicted image.

Example:
    >>> import torch
    >>> from callbacks.reversal_picture import accuracies, accuracy_text
    >>> y = torch.tensor([0, 1, 2, 3])
    >>> acc = accuracies(y, y, torch.tensor([0, 0, 0, 0]), torch.tensor([0, 1, 0, 3]))
    >>> print(accuracy_text(acc))
    4 images: clean 100.0% | attacked, no reversal 25.0% | attacked + reversal 75.0%
    >>> print(gain_text(acc))
    reversal gain +50.0 points (paired 95% CI -1.9 to 73.6, McNemar p=0.5, n=4)
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Optional, Sequence

import lightning.pytorch as pl
import torch

from lightning_modules.evaluation.stats import PairedCounts, paired_gain, wilson
from lightning_modules.util import eps_label, module_inputs

from .predictions import _gather_to_rank0, merge_predictions

PRED_KEYS = ("idx", "y", "pred_clean", "pred_before", "pred_after")
RIGHT, WRONG = "#1a7f37", "#cf222e"  # green / red text
MARK = {True: "\u2713", False: "\u2717"}  # check mark / ballot x (DejaVu Sans has both)


def accuracies(
    y: torch.Tensor, pred_clean: torch.Tensor, pred_before: torch.Tensor, pred_after: torch.Tensor
) -> dict[str, float]:
    """Fractions correct: ``clean``, ``before`` (attacked, no reversal), ``after`` (attacked + reversal); ``n``;
    their Wilson 95% intervals (``ci_clean`` ...) and the reversal's paired gain (``gain``: after minus before)."""
    out: dict = {"n": len(y)}
    for k, p in (("clean", pred_clean), ("before", pred_before), ("after", pred_after)):
        ok = p == y
        out[k], out[f"ci_{k}"] = ok.float().mean().item(), list(wilson(int(ok.sum()), len(y)))
    pc = PairedCounts.from_flags((pred_after == y).tolist(), (pred_before == y).tolist())
    out["gain"] = paired_gain(pc)
    return out


def accuracy_text(acc: dict[str, float]) -> str:
    """One line, as in the picture's title and on stdout."""
    return (
        f"{acc['n']} images: clean {acc['clean']:.1%} | attacked, no reversal {acc['before']:.1%} | "
        f"attacked + reversal {acc['after']:.1%}"
    )


def gain_text(acc: dict) -> str:
    """The reversal's gain on the attacked images, with its paired interval and McNemar's p."""
    g = acc["gain"]
    return (
        f"reversal gain {100 * g['gain']:+.1f} points (paired 95% CI {100 * g['lo']:.1f} to {100 * g['hi']:.1f}, "
        f"McNemar p={g['p_mcnemar']:.2g}, n={acc['n']})"
    )


def _name(class_names: Optional[Sequence[str]], c: int) -> str:
    return class_names[c] if class_names is not None and 0 <= c < len(class_names) else str(c)


def reversal_figure(
    x: torch.Tensor,
    x_adv: torch.Tensor,
    x_rev: torch.Tensor,
    y: torch.Tensor,
    pred_clean: torch.Tensor,
    pred_before: torch.Tensor,
    pred_after: torch.Tensor,
    class_names: Optional[Sequence[str]],
    accuracies: dict[str, float],
    attack: str = "attacked",
    idx: Optional[torch.Tensor] = None,
) -> Any:
    """A matplotlib figure, one column per image (``x``: ``(n, 3, H, W)`` in ``[0, 1]``), five rows: clean,
    attacked, reversed (each with its predicted label, green check mark when right, red cross when wrong),
    ``|x_adv - x|`` and ``|x_rev - x_adv|`` on one scale that makes the largest difference white. The
    title holds ``accuracies`` (:func:`accuracies`, on every predicted image, not only those shown)."""
    from lightning_modules.evaluation.report import pyplot

    x, x_adv, x_rev = (t.detach().float().cpu().clamp(0, 1) for t in (x, x_adv, x_rev))
    y, pred_clean, pred_before, pred_after = (t.detach().cpu().long() for t in (y, pred_clean, pred_before, pred_after))
    d_adv, d_rev = (x_adv - x).abs(), (x_rev - x_adv).abs()
    largest = max(d_adv.max().item(), d_rev.max().item())
    gain = 1.0 / largest if largest > 0 else 1.0
    rows = [
        (x, "clean x\n(true label above)", pred_clean),
        (x_adv, f"x_adv\n{attack}", pred_before),
        (x_rev, "x_rev\nreversed x_adv", pred_after),
        ((d_adv * gain).clamp(0, 1), f"|x_adv - x|\n\u00d7 {gain:.1f}", None),
        ((d_rev * gain).clamp(0, 1), f"|x_rev - x_adv|\n\u00d7 {gain:.1f}", None),
    ]
    n = len(x)
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n + 1.3, 1.62 * len(rows) + 0.3), squeeze=False)
    for r, (images, label, preds) in enumerate(rows):
        for i in range(n):
            ax = axes[r][i]
            ax.imshow(images[i].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                number = f"#{int(idx[i])} " if idx is not None else ""
                ax.set_title(f"{number}true: {_name(class_names, int(y[i]))}", fontsize=9, fontweight="bold")
            if preds is not None:
                ok, text = bool(preds[i] == y[i]), _name(class_names, int(preds[i]))
                style = dict(transform=ax.transAxes, ha="center", va="top", fontsize=9, fontweight="bold")
                ax.text(0.5, -0.05, f"{text} {MARK[ok]}", color=RIGHT if ok else WRONG, **style)
            if i == 0:
                ax.set_ylabel(label, fontsize=9)
    width, height = fig.get_size_inches()
    notes = (
        f"The reversal on the first {n} images: under each image the prediction on it (green {MARK[True]} "
        f"right, red {MARK[False]} wrong). Bottom rows: |difference| per RGB channel \u00d7 {gain:.1f} (the "
        f"largest difference shown, {255 * largest:.1f}/255, is white, half of it mid-gray; black = unchanged)."
    )
    chars = max(40, int(width * 12))  # wrap to the figure's width (10 pt text)
    fig.suptitle(
        f"Accuracy on {accuracy_text(accuracies)}\n{textwrap.fill(notes, chars)}", fontsize=10, y=1.0, va="bottom"
    )
    fig.subplots_adjust(left=0.08, right=0.99, bottom=0.02, top=1 - 0.3 / height, wspace=0.08, hspace=0.32)
    return fig


def attack_label(pl_module: Any) -> str:
    """``PGD-20, eps 8/255`` (or ``no attack``) from the module's ``inference`` and ``attack`` settings."""
    inf, att = getattr(pl_module, "inference_cfg", None), getattr(pl_module, "attack_cfg", None)
    if inf is not None and inf.predict_attack == "none":
        return "no attack"
    steps = inf.predict_attack_steps if inf is not None else "?"
    return f"PGD-{steps}, eps {eps_label(float(att.eps if att is not None else 8 / 255), 'Linf')}"


class ReversalPicture(pl.Callback):
    """During ``predict``: the first ``n_images`` of the first batch as :func:`reversal_figure` in ``output``
    (PNG, written atomically when the epoch succeeded; W&B: ``log_key``); the accuracies on every predicted
    image go into the title and to stdout. Class names: the DataModule's ``class_names`` (else numbers).
    An existing ``output`` is kept unless ``overwrite`` (``--overwrite true``): the run refuses to start."""

    def __init__(
        self,
        n_images: int = 8,
        output: str = "results/reverse/reversal.png",
        overwrite: bool = False,
        log_key: str = "reversal/picture",
    ) -> None:
        if n_images < 1:
            raise ValueError(f"n_images must be >= 1, got {n_images}")
        self.n_images, self.output, self.overwrite, self.log_key = n_images, Path(output), overwrite, log_key
        self._parts: list[dict[str, torch.Tensor]] = []
        self._shown: Optional[dict[str, torch.Tensor]] = None
        self.accuracies: Optional[dict[str, float]] = None
        self._message: Optional[str] = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        if not self.overwrite and trainer.is_global_zero and self.output.exists():
            raise FileExistsError(
                f"{self.output} exists (an earlier run's picture): pass --overwrite true to "
                "replace it, or move it away first"
            )
        self._parts, self._shown, self.accuracies, self._message = [], None, None, None

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not isinstance(outputs, dict) or not all(k in outputs for k in (*PRED_KEYS, "x_input", "x_reversed")):
            return
        self._parts.append({k: outputs[k].detach().cpu() for k in PRED_KEYS})
        if self._shown is None:
            k = min(self.n_images, len(outputs["y"]))
            shown = {"x": module_inputs(pl_module, batch[0][:k]), "x_adv": outputs["x_input"][:k]}
            shown.update(x_rev=outputs["x_reversed"][:k], **{key: outputs[key][:k] for key in PRED_KEYS})
            self._shown = {
                key: v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu() for key, v in shown.items()
            }

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        parts = _gather_to_rank0(merge_predictions(self._parts) if self._parts else None, trainer)
        if not trainer.is_global_zero or not parts or self._shown is None:
            return
        merged = merge_predictions(parts)
        self.accuracies = accuracies(merged["y"], merged["pred_clean"], merged["pred_before"], merged["pred_after"])
        s = self._shown
        names = getattr(getattr(trainer, "datamodule", None), "class_names", None)
        tensors = [s[k] for k in ("x", "x_adv", "x_rev", "y", "pred_clean", "pred_before", "pred_after")]
        fig = reversal_figure(*tensors, names, self.accuracies, attack=attack_label(pl_module), idx=s["idx"])
        from lightning_modules.evaluation.report import save_figure

        save_figure(fig, self.output)
        caption = [f"accuracy on {accuracy_text(self.accuracies)}"]
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                logger.log_image(key=self.log_key, images=[str(self.output)], caption=caption)
        self._message = (
            f"reversal picture -> {self.output}\naccuracy on {accuracy_text(self.accuracies)} "
            f"({attack_label(pl_module)}); {gain_text(self.accuracies)}"
        )

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Print the accuracies at the very end (after the progress bar closed)."""
        if stage == "predict" and self._message:
            print(self._message)
        self._message = None
