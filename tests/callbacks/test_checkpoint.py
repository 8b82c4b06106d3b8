"""Fault tolerance: atomic checkpoint writes, exact mid-epoch resume, and a real SIGKILL + ``--ckpt_path last``."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

import callbacks.checkpoint as ckpt_mod
from callbacks import AtomicCheckpoint, DeviceEMA
from datamodules import CIFAR10DataModule
from lightning_modules import ReversalModule
from tests.cli_runs import lightning, metric_values, popen_lightning, read_metrics, tiny_args
from tests.conftest import write_cifar10


def tiny_module() -> ReversalModule:
    return ReversalModule(
        backbone="small_cnn",
        backbone_kwargs={"width": 4},
        head_hidden=8,
        head_dim=4,
        ssl=dict(weight=0.0),
        optim=dict(schedule="constant"),
        inference=dict(val_attack_steps=0),
    )


class RecordBatches(pl.Callback):
    def __init__(self) -> None:
        self.seen: list[tuple[int, int, list[int]]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.append((trainer.global_step, batch_idx, batch[2].tolist()))


def fit(data: Path, ckpt_dir: Path, max_epochs: int, ckpt_path=None, **ckpt_kw) -> tuple[pl.Trainer, RecordBatches]:
    pl.seed_everything(0)
    rec = RecordBatches()
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[AtomicCheckpoint(dirpath=ckpt_dir, **ckpt_kw), rec],
    )
    trainer.fit(tiny_module(), CIFAR10DataModule(str(data), batch_size=8, strict_counts=False), ckpt_path=ckpt_path)
    return trainer, rec


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_cifar10(tmp_path / "data", n_train=40, n_test=8)  # 5 batches of 8 per epoch


def test_resume_mid_epoch_continues_with_the_next_batch(data, tmp_path):
    full, rec_full = fit(data, tmp_path / "a", 2, every_n_train_steps=1, save_top_k=-1, save_last=True)
    assert full.global_step == 10
    # step 3 is mid-epoch 0 (5 batches per epoch), 5 its last batch, 9 mid-epoch 1
    for step in (3, 5, 9):
        path = next((tmp_path / "a").glob(f"*-step={step}.ckpt"))
        ck = torch.load(path, weights_only=True)
        assert ck["global_step"] == step
        resumed, rec = fit(data, tmp_path / f"b{step}", 2, ckpt_path=path, every_n_train_steps=3, save_last=True)
        assert resumed.global_step == 10
        # the same batches, in the same order, as the uninterrupted run from that step on
        assert rec.seen == [s for s in rec_full.seen if s[0] >= step]


@pytest.mark.parametrize("crash", ["during_write", "before_rename"])
def test_crash_while_saving_keeps_previous_checkpoint(data, tmp_path, monkeypatch, crash):
    ckdir = tmp_path / "ck"
    fit(data, ckdir, 1, every_n_train_steps=2, save_last=True)
    last = ckdir / "last.ckpt"
    before = last.read_bytes()
    assert torch.load(last, weights_only=True)["global_step"] == 5  # the final state (saved at the end)

    class Crash(Exception):
        pass

    if crash == "during_write":  # half the bytes reach the disk, then the process dies
        import lightning.fabric.plugins.io.torch_io as torch_io

        def half_write(checkpoint, filepath):
            import io

            buf = io.BytesIO()
            torch.save(checkpoint, buf)
            with open(filepath, "wb") as f:
                f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            raise Crash(str(filepath))

        monkeypatch.setattr(torch_io, "_atomic_save", half_write)
    else:

        def boom(src, dst):
            raise Crash(f"{src} -> {dst}")

        monkeypatch.setattr(ckpt_mod.os, "replace", boom)
    with pytest.raises(Crash) as info:
        fit(data, ckdir, 2, ckpt_path=last, every_n_train_steps=2, save_last=True)
    assert ".tmp-" in str(info.value)  # the interrupted write went to a temporary name
    monkeypatch.undo()
    assert last.read_bytes() == before  # last.ckpt untouched and loadable
    assert torch.load(last, weights_only=True)["global_step"] == 5
    for p in ckdir.glob("*.ckpt"):
        torch.load(p, weights_only=True)
    # the leftover temporary is never taken for a checkpoint, and the next run removes it
    tmps = list(ckdir.glob("*.tmp-*"))
    assert tmps
    for t in tmps:  # pretend its writer died (our own pid is alive)
        t.rename(t.with_name(t.name.rsplit(".tmp-", 1)[0] + ".tmp-999999999"))
    cb = AtomicCheckpoint(dirpath=ckdir, save_last=True)
    trainer = pl.Trainer(accelerator="cpu", logger=False, callbacks=[cb])
    assert {Path(p).name for p in cb._find_last_checkpoints(trainer)} == {"last.ckpt"}
    assert len(ckpt_mod.remove_stale_temporaries(ckdir)) == len(tmps) and not list(ckdir.glob("*.tmp-*"))


def test_save_last_link_is_swapped_atomically(data, tmp_path, monkeypatch):
    ckdir = tmp_path / "ck"
    fit(data, ckdir, 1, every_n_train_steps=5, save_last="link")  # the last step (5) is a saved step
    last = ckdir / "last.ckpt"
    assert last.is_symlink() and os.readlink(last) == "epoch=0-step=5.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 5

    def boom(src, dst):
        raise RuntimeError("killed before the rename")

    monkeypatch.setattr(ckpt_mod.os, "replace", boom)
    with pytest.raises(RuntimeError, match="killed"):
        AtomicCheckpoint._link_checkpoint(
            pl.Trainer(accelerator="cpu", logger=False), str(ckdir / "epoch=0-step=2.ckpt"), str(last)
        )
    monkeypatch.undo()
    assert last.is_symlink() and os.readlink(last) == "epoch=0-step=5.ckpt"  # the old link is still in place
    # training that ends between saves: last.ckpt becomes a file holding the final state
    fit(data, tmp_path / "ck2", 1, every_n_train_steps=2, save_last="link")
    last = tmp_path / "ck2" / "last.ckpt"
    assert not last.is_symlink() and torch.load(last, weights_only=True)["global_step"] == 5


STALL = '''
import os, time
import lightning.pytorch as pl

class Stall(pl.Callback):
    """Stops training (sleeps) once global_step reaches at_step and says so in a marker file."""
    def __init__(self, at_step: int, marker: str):
        self.at_step, self.marker = at_step, marker
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.at_step:
            with open(self.marker + ".tmp", "w") as f:
                f.write(f"{trainer.global_step} {batch_idx}")
            os.replace(self.marker + ".tmp", self.marker)
            time.sleep(600)
'''


def test_sigkill_mid_epoch_then_resume_from_last(tmp_path):
    """A CPU run killed with SIGKILL in the middle of an epoch resumes with ``--ckpt_path last`` and
    ends at the same global step as an uninterrupted run, with every checkpoint loadable."""
    data = write_cifar10(tmp_path / "data", n_train=64, n_test=8)  # 16 steps per epoch at batch 4
    root = tmp_path / "run"
    (tmp_path / "stall_helper.py").write_text(STALL)
    marker = tmp_path / "stalled"
    ckpt_cb = (
        "    - class_path: callbacks.AtomicCheckpoint\n      init_args: {every_n_train_steps: 5, save_last: true}\n"
    )
    common = ["--trainer.max_epochs", "3", "--model.init_args.ssl.weight", "0", "--trainer.limit_val_batches", "0"]
    args = tiny_args(
        data,
        root,
        *common,
        callbacks=ckpt_cb
        + (f"    - class_path: stall_helper.Stall\n      init_args: {{at_step: 23, marker: {marker}}}\n"),
    )
    proc = popen_lightning("fit", *args, cwd=tmp_path, log=tmp_path / "killed.log", PYTHONPATH=str(tmp_path))
    try:
        while not marker.exists():  # bounded by the run's steps: it stalls at step 23 or exits
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert marker.read_text().split() == ["23", "6"]  # killed mid-epoch 1 (batch 6 of 16)
    ckdir = root / "checkpoints" / "tiny"
    ckpts = sorted(ckdir.glob("*.ckpt"))
    assert {p.name for p in ckpts} >= {"last.ckpt"}
    for p in ckpts:  # nothing truncated, nothing that needs more than weights_only
        torch.load(p, weights_only=True)
    assert torch.load(ckdir / "last.ckpt", weights_only=True)["global_step"] == 20

    # resume: same command without the stall, --ckpt_path last
    r = lightning("fit", *tiny_args(data, root, *common, "--ckpt_path", "last", callbacks=ckpt_cb), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"Restored all states from the checkpoint at {ckdir / 'last.ckpt'}" in r.stdout + r.stderr
    final = torch.load(ckdir / "last.ckpt", weights_only=True)
    assert final["global_step"] == 3 * 16 and final["epoch"] == 3  # where an uninterrupted run ends (3 epochs done)
    steps = [s for s, _ in metric_values(read_metrics(root), "train/loss")]
    assert steps == list(range(20, 48))  # the resumed run trained steps 21..48 once each (0-based 20..47)
    assert not list(ckdir.glob("*.tmp-*"))


@pytest.mark.parametrize("stop", ["epochs", "mid_epoch"])
def test_base_config_last_checkpoint_holds_the_final_step(data, tmp_path, stop):
    """The base file's checkpoint settings (AtomicCheckpoint's default) save at every epoch's end, so
    ``last.ckpt`` is the final state also when validation runs only every k epochs (the fast recipe: 5) or a
    limit stops training mid-epoch (max_time, here max_steps). Lightning's default saves after validation only,
    and with EMA (the fast recipe's) the final save is skipped (see ``AtomicCheckpoint.on_train_end``): the
    last epochs were left out."""
    import yaml

    base = yaml.safe_load((Path(ckpt_mod.__file__).parent.parent / "lightning_modules" / "base.yaml").read_text())
    kw = next(c["init_args"] for c in base["trainer"]["callbacks"] if c["class_path"] == "callbacks.AtomicCheckpoint")
    pl.seed_everything(0)
    limits = {"max_epochs": 3} if stop == "epochs" else {"max_epochs": 3, "max_steps": 7}  # 5 steps an epoch
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        check_val_every_n_epoch=2,
        limit_val_batches=1,
        callbacks=[AtomicCheckpoint(dirpath=tmp_path / "ck", **kw), DeviceEMA(decay=0.9, update_starting_at_step=2)],
        **limits,
    )
    trainer.fit(tiny_module(), CIFAR10DataModule(str(data), batch_size=8, strict_counts=False))
    last = torch.load(tmp_path / "ck" / "last.ckpt", weights_only=True)
    assert last["global_step"] == trainer.global_step == (15 if stop == "epochs" else 7)
    assert "current_model_state" in last  # the average in state_dict, the live weights beside it
