"""A full disk during a checkpoint write: the partial file is removed and the error says how much space the
write needed and where; an epoch checkpoint is never left without the ``last.ckpt`` of its step."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from callbacks import AtomicCheckpoint
from callbacks.checkpoint import checkpoint_bytes
from datamodules import CIFAR10DataModule
from lightning_modules.util import atomic_write
from tests.callbacks.test_checkpoint import tiny_module
from tests.conftest import write_cifar10


def trainer_for(ckpt_dir: Path, max_epochs: int = 1) -> pl.Trainer:
    pl.seed_everything(0)
    return pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[AtomicCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_epochs=1)],
    )


def full_disk_for(monkeypatch, names: tuple[str, ...], from_step: int = 0) -> list[str]:
    """Trainer.save_checkpoint writes half a file, then fails with ENOSPC, for targets starting with ``names``
    (from global step ``from_step`` on)."""
    real, calls = pl.Trainer.save_checkpoint, []

    def save(self, filepath, weights_only=False, storage_options=None):
        calls.append(os.path.basename(filepath))
        if os.path.basename(filepath).startswith(names) and self.global_step >= from_step:
            Path(filepath).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, filepath, weights_only, storage_options)

    monkeypatch.setattr(pl.Trainer, "save_checkpoint", save)
    return calls


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_cifar10(tmp_path / "data", n_train=16, n_test=8)


def test_a_full_disk_removes_the_partial_file_and_says_what_it_needed(data, tmp_path, monkeypatch):
    full_disk_for(monkeypatch, ("epoch=", "last"))
    trainer, module = trainer_for(tmp_path / "ck"), tiny_module()
    with pytest.raises(
        OSError, match=r"no space left on the disk to write .*epoch=0-step=2\.ckpt: it needs about "
    ) as e:
        trainer.fit(module, CIFAR10DataModule(str(data), batch_size=8, strict_counts=False))
    assert e.value.errno == errno.ENOSPC
    assert f"free in {tmp_path / 'ck'}" in str(e.value) and "--trainer.default_root_dir" in str(e.value)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == []  # no .tmp-PID left filling the disk
    weights = sum(p.numel() * p.element_size() for p in module.state_dict().values())
    assert checkpoint_bytes(trainer) > weights == checkpoint_bytes(trainer, weights_only=True)  # + momentum


@pytest.mark.parametrize("epoch", [0, 1])
def test_an_epoch_checkpoint_is_kept_only_with_its_last_ckpt(data, tmp_path, monkeypatch, epoch):
    """Room for one checkpoint, not two: the epoch's file is written, then last.ckpt fails (ENOSPC); the epoch's
    file goes too, so the newest checkpoint left is the last.ckpt of an earlier epoch (or none)."""
    calls = full_disk_for(monkeypatch, ("last",), from_step=2 * (epoch + 1))  # 2 steps per epoch
    step = 2 * (epoch + 1)
    with pytest.raises(
        OSError, match=rf"to write .*last\.ckpt: .*; epoch={epoch}-step={step}\.ckpt of the same step was removed too"
    ) as e:
        trainer_for(tmp_path / "ck", max_epochs=2).fit(
            tiny_module(), CIFAR10DataModule(str(data), batch_size=8, strict_counts=False)
        )
    assert e.value.errno == errno.ENOSPC and "--ckpt_path last resumes the newest checkpoint" in str(e.value)
    assert calls[-2:] == [f"epoch={epoch}-step={step}.ckpt.tmp-{os.getpid()}", f"last.ckpt.tmp-{os.getpid()}"]
    left = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert left == ([] if epoch == 0 else ["last.ckpt"])  # save_top_k=1: epoch 0's file made way for epoch 1's
    if epoch == 1:
        assert torch.load(tmp_path / "ck" / "last.ckpt", weights_only=True)["global_step"] == 2


def test_atomic_write_on_a_full_disk_removes_its_temporary_file(tmp_path):
    def half_then_full(f):
        f.write(b"x" * 4096)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=r"to write .*report\.json: it needs more than 4\.0 KiB, .* free in "):
        atomic_write(tmp_path / "report.json", half_then_full)
    assert list(tmp_path.iterdir()) == []
