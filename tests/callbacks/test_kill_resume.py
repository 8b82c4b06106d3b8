"""SIGKILL, then ``--ckpt_path last``: the resumed fit ends at the uninterrupted run's step with its weights.

A one-cycle run of 4 epochs x 10 steps with the base file's checkpoint settings (every epoch's end,
``last.ckpt``), killed without teardown between two epochs or in the middle of one; the resumed run must
not come back with an empty epoch (which would end the schedule one epoch early)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch

from tests.cli_runs import lightning, popen_lightning, tiny_args
from tests.conftest import write_cifar10

STALL = '''
import os, time
import lightning.pytorch as pl

class Stall(pl.Callback):
    """Sleeps before the batch of step ``at_step`` (after every save of the steps before), saying so in a file."""
    def __init__(self, at_step: int, marker: str):
        self.at_step, self.marker = at_step, marker
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step >= self.at_step:
            with open(self.marker + ".tmp", "w") as f:
                f.write(f"{trainer.global_step} {batch_idx}")
            os.replace(self.marker + ".tmp", self.marker)
            time.sleep(600)
'''

EPOCHS, STEPS = 4, 10  # 40 images at batch 4
COMMON = [
    "--trainer.max_epochs",
    str(EPOCHS),
    "--model.init_args.optim.schedule",
    "onecycle",
    "--model.init_args.ssl.weight",
    "0",
    "--trainer.limit_val_batches",
    "1",
]


def checkpoint_cb(on_epoch_end: str) -> str:
    return (
        "    - class_path: callbacks.AtomicCheckpoint\n"
        f"      init_args: {{save_last: true, every_n_epochs: 1, save_on_train_epoch_end: {on_epoch_end}}}\n"
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_cifar10(tmp_path_factory.mktemp("kill_data"), n_train=EPOCHS * STEPS, n_test=8)


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("uninterrupted")
    r = lightning("fit", *tiny_args(data, root, *COMMON, callbacks=checkpoint_cb("true")), cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    return torch.load(root / "checkpoints" / "tiny" / "last.ckpt", weights_only=True)


@pytest.mark.parametrize(
    "at_step, on_epoch_end",
    [(20, "true"), (25, "true"), (20, "null")],
    ids=["between_epochs", "mid_epoch", "between_epochs_saved_after_validation"],
)
def test_killed_fit_resumes_to_the_uninterrupted_step_and_weights(data, uninterrupted, tmp_path, at_step, on_epoch_end):
    (tmp_path / "stall_helper.py").write_text(STALL)
    marker, root, cb = tmp_path / "stalled", tmp_path / "run", checkpoint_cb(on_epoch_end)
    stall = f"    - class_path: stall_helper.Stall\n      init_args: {{at_step: {at_step}, marker: {marker}}}\n"
    args = tiny_args(data, root, *COMMON, callbacks=cb + stall)
    proc = popen_lightning("fit", *args, cwd=tmp_path, log=tmp_path / "killed.log", PYTHONPATH=str(tmp_path))
    try:
        while not marker.exists():  # bounded by the run's steps: it stalls or exits
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    last = root / "checkpoints" / "tiny" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 20  # epoch 2's end: the last save before the kill

    r = lightning("fit", *tiny_args(data, root, *COMMON, "--ckpt_path", "last", callbacks=cb), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    final = torch.load(last, weights_only=True)
    assert final["global_step"] == uninterrupted["global_step"] == EPOCHS * STEPS
    assert final["epoch"] == uninterrupted["epoch"]
    for k, v in uninterrupted["state_dict"].items():
        assert torch.equal(final["state_dict"][k], v), k
