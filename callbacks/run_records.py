"""What a robustness evaluation records besides its per-example results: the identity of its weights
and software, the settings that decide its results (the store's ``meta``: a resumed run must match
it), and the report's copies in the run's own folder, on stdout and on W&B. Used by
:class:`~callbacks.robust_eval.RobustEvaluation`.

Example:
    >>> import torch
    >>> a, b = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    >>> b.load_state_dict(a.state_dict())
    <All keys matched successfully>
    >>> model_fingerprint(a) == model_fingerprint(b)
    True
    >>> with torch.no_grad():
    ...     _ = b.bias.add_(1)
    >>> model_fingerprint(a) == model_fingerprint(b)
    False
    >>> sorted(versions())
    ['commit', 'kornia', 'pyautoattack', 'ssl-reversal', 'torch']
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import subprocess
from pathlib import Path
from typing import Callable, Optional

import lightning.pytorch as pl
import torch
from torchvision.utils import save_image

from lightning_modules.defense import DefendedModel
from lightning_modules.evaluation import EvalConfig
from lightning_modules.evaluation.report import failed_checks, flat_metrics, markdown_report, write_report
from lightning_modules.util import atomic_write

REPO = Path(__file__).resolve().parent.parent
# settings that change no result
NOT_RESULTS = ("progress", "checks.sanity_checks", "checks.zero_tolerance", "checks.noise_tolerance")
GRID = "reversal_grid.png"


def model_fingerprint(module: torch.nn.Module) -> str:
    """SHA-1 of every tensor of the state dict (names, shapes, bytes): identifies the weights."""
    h = hashlib.sha1()
    for k, v in sorted(module.state_dict().items()):
        if not torch.is_tensor(v):
            continue
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


def versions() -> dict[str, Optional[str]]:
    """The package, its commit, and the libraries whose code decides a result."""
    out: dict[str, Optional[str]] = {}
    for dist in ("ssl-reversal", "torch", "pyautoattack", "kornia"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    try:
        git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        out["commit"] = git.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        out["commit"] = None
    return out


def run_meta(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    fns: DefendedModel,
    cfg: EvalConfig,
    surrogate_sha: Optional[str],
    dataloader_idx: int,
) -> dict:
    """Every setting that can change a result (as JSON would give it back): a store is only resumed
    or merged under the same ``meta``."""
    dm = getattr(trainer, "datamodule", None)
    h = pl_module.hparams
    settings = dataclasses.asdict(cfg)
    for path in NOT_RESULTS:
        group, _, name = path.rpartition(".")
        (settings[group] if group else settings).pop(name)
    data = {"class": type(dm).__name__ if dm is not None else None, "data_dir": str(getattr(dm, "data_dir", ""))}
    data.update(dataloader_idx=dataloader_idx, n_examples=getattr(dm, "n_examples", None))
    if getattr(dm, "test_order", "first") == "shuffled":  # positions are per-example keys; the first N: no entry
        data.update(test_order="shuffled", test_seed=dm.seed)
    data["eval_batch_size"] = getattr(dm, "eval_batch_size", None)
    meta = {"model": type(pl_module).__name__ + f" ({h.get('robustbench_model') or h.get('backbone')})"}
    meta.update(weights_sha1=model_fingerprint(pl_module), reversal=dataclasses.asdict(fns.cfg))
    meta.update(temperature=fns.temperature, evaluation=settings, transfer_from_sha1=surrogate_sha, data=data)
    meta.update(world_size=trainer.world_size, versions=versions())
    return json.loads(json.dumps(meta, default=str))


def log_run_dir(trainer: pl.Trainer) -> Optional[Path]:
    """``robustness/`` in the run's own folder: the W&B run's files dir (uploaded with the run),
    else the logger's versioned log dir."""
    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger":
            d = getattr(logger.experiment, "dir", None)
            if d:
                return Path(d) / "robustness"
    return Path(trainer.log_dir) / "robustness" if trainer.log_dir else None


def report_dirs(output_dir: Path, trainer: pl.Trainer) -> list[Path]:
    """``output_dir``, then the run's own folder (:func:`log_run_dir`) when there is one elsewhere."""
    dirs = [output_dir]
    run_dir = log_run_dir(trainer)
    if run_dir is not None and run_dir.resolve() != output_dir.resolve():
        dirs.append(run_dir)
    return dirs


def save_grid(grid: torch.Tensor, dirs: list[Path]) -> Path:
    """``reversal_grid.png`` in every folder (atomically); returns the first one's path."""
    for d in dirs:
        atomic_write(d / GRID, lambda f: save_image(grid, f, format="png"))
    return dirs[0] / GRID


def publish(
    trainer: pl.Trainer,
    summary: dict,
    output_dir: Path,
    make_grid: Callable[[], Optional[torch.Tensor]],
    print_report: bool = True,
) -> dict[str, Path]:
    """The report (:func:`~lightning_modules.evaluation.report.write_report`) in ``output_dir`` and the
    run's own folder, then the grid of ``make_grid`` (called after those files are written); the report
    and any failed sanity check printed; all logged to W&B. Returns the paths in ``output_dir``."""
    dirs = report_dirs(output_dir, trainer)
    paths = write_report(summary, dirs[0])
    for d in dirs[1:]:
        write_report(summary, d)
    grid = make_grid()
    if grid is not None:
        paths["grid"] = save_grid(grid, dirs)
    if print_report:
        print("\n" + markdown_report(summary) + "\n", flush=True)
    bad = failed_checks(summary)
    if bad:
        print(
            f"WARNING: {len(bad)} robustness sanity check(s) FAILED, the headline is UNRELIABLE "
            f"(see {paths.get('markdown')}):",
            *[f"  - {s['name']}: {s['detail']}" for s in bad],
            sep="\n",
            flush=True,
        )
    log_wandb(trainer, summary, grid)
    return paths


def log_wandb(trainer: pl.Trainer, summary: dict, grid: Optional[torch.Tensor]) -> None:
    """The evaluation table, its metrics, whether the headline is reliable and the grid, to every W&B logger."""
    for logger in trainer.loggers:
        if type(logger).__name__ != "WandbLogger":
            continue
        cols = ["threat", "eps", "attack", "type", "acc_without_reversal", "acc_with_reversal_all_draws"]
        cols += ["acc_with_reversal_mean", "draw_disagreement", "acc_with_worst_composition", "n", "time_s"]
        keys = ("without", "with", "with_mean", "with_disagreement", "with_worst", "n", "time_s")
        data = [["clean", "0", "none", "-", *(summary["clean"].get(k) for k in keys)]]
        data += [
            [r["threat"], r["eps_label"], r["label"], r["kind"], *(r.get(k) for k in keys)] for r in summary["rows"]
        ]
        worst = "worst case per example" + ("" if summary.get("reliable", True) else " (UNRELIABLE)")
        data += [
            [w["threat"], w["eps_label"], worst, "all", w["without"], w["with"], None, None, None, w["n"], None]
            for w in summary["worst_case"]
        ]
        logger.log_table(key="eval/robustness", columns=cols, data=data)
        logger.experiment.summary.update(flat_metrics(summary))
        logger.experiment.summary["eval/headline_reliable"] = bool(summary.get("reliable", True))
        logger.experiment.summary["eval/sanity_failed_names"] = [s["name"] for s in failed_checks(summary)]
        if grid is not None:
            logger.log_image(key="eval/x__x_adv__x_rev__diffs", images=[grid])
