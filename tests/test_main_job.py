"""What the main job promises: per-epoch progress lines with the time left, the first image grid at the
first validation, and an offline W&B run that holds the metrics, the image and the evaluation table
(read back from the run file, the records `wandb sync` uploads)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from tests.cli_runs import REPO, lightning, tiny_args
from tests.conftest import write_cifar10
from tests.wandb_records import history, read_records, run_file

FIT_CALLBACKS = (
    "    - class_path: callbacks.AtomicCheckpoint\n      init_args: {save_last: true}\n"
    "    - class_path: callbacks.TrainProgress\n"
    "    - class_path: callbacks.ImageGrid\n      init_args: {n_images: 4, every_n_epochs: 5}\n"
)


def _runs(root: Path) -> list[Path]:
    return sorted(root.glob("wandb/offline-run-*"), key=lambda p: p.stat().st_mtime)


def test_fit_and_evaluation_leave_what_a_dashboard_shows(tmp_path):
    data = write_cifar10(tmp_path / "data", n_train=48, n_test=16)
    root = tmp_path / "run"
    fit = tiny_args(data, root, "--trainer.max_epochs", "2", callbacks=FIT_CALLBACKS)
    r = lightning("fit", *fit, cwd=tmp_path, WANDB_MODE="offline")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # one progress line per epoch, with the speed and the time left of the whole fit
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("[train] epoch")]
    assert len(lines) == 2, r.stdout[-2000:]
    assert re.match(r"\[train\] epoch 1/2: [\d.]+ steps/s, \d+ images/s; val/acc [\d.]+%; about .+ left", lines[0])
    assert "about 0 s left" in lines[1]
    # a fit cut by max_steps inside an epoch has no validation for it: no stale numbers on that line
    r = lightning(
        "fit",
        *tiny_args(
            data, tmp_path / "cut", "--trainer.max_epochs", "2", "--trainer.max_steps", "15", callbacks=FIT_CALLBACKS
        ),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    cut = [ln for ln in r.stdout.splitlines() if ln.startswith("[train] epoch")]
    assert len(cut) == 2 and "val/acc" in cut[0] and "val/acc" not in cut[1], cut
    (fit_run,) = _runs(root)
    rows = history(run_file(fit_run))
    keys = set().union(*rows)
    assert {"train/loss", "train/acc", "val/acc"} <= keys, sorted(keys)
    # max_epochs 2 < every_n_epochs 5: the grid still comes, from the first validation
    grids = [row for row in rows if row.get("images/x__x_adv__x_rev__diffs/_type") == "images/separated"]
    assert len(grids) == 1
    assert (fit_run / "files" / grids[0]["images/x__x_adv__x_rev__diffs/filenames"][0]).is_file()

    ckpt = next(root.rglob("last.ckpt"))
    ev = root / "eval"
    eval_cb = (
        "    - class_path: callbacks.RobustEvaluation\n      init_args:\n"
        f"        output_dir: {ev}\n"
        "        config: {threat_models: {Linf: 8/255}, attacks: [pgd], attack: {steps: 2}, progress: false,"
        " scoring: {draws: 2, composition: []},"
        " sweeps: {eps_sweep: [], attack_steps_sweep: [], eot_sweep: [], reversal_steps_sweep: []}}\n"
    )
    r = lightning(
        "test", *tiny_args(data, root, "--ckpt_path", str(ckpt), callbacks=eval_cb), cwd=tmp_path, WANDB_MODE="offline"
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    eval_run = _runs(root)[-1]
    assert eval_run != fit_run
    rows = history(run_file(eval_run))
    tables = [row for row in rows if row.get("eval/robustness/_type") == "table-file"]
    assert len(tables) == 1 and tables[0]["eval/robustness/nrows"] >= 3  # clean, PGD, worst case
    summary = {}
    for rec in read_records(run_file(eval_run)):
        if rec.WhichOneof("record_type") == "summary":
            summary.update({(u.key or "/".join(u.nested_key)): u.value_json for u in rec.summary.update})
    reliable = json.loads((ev / "robustness.json").read_text())["reliable"]
    assert bool(json.loads(summary["eval/headline_reliable"])) == reliable, sorted(summary)


def test_train_cifar10_says_which_profile_it_runs():
    out = subprocess.run(
        ["make", "-n", "train-cifar10", "TRAIN_DEVICE=cpu"], cwd=REPO, capture_output=True, text=True
    ).stdout
    assert "experiments/cifar10/$exp.yaml" in out and "check.yaml" in out and "reverse.yaml" in out
    assert "No GPU: the CPU profile" in out and "about 10 minutes on 2 cores" in out
