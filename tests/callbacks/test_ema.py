"""DeviceEMA: the same averaged weights as Lightning's EMAWeightAveraging, without host syncs."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn as nn
from lightning.pytorch.callbacks import EMAWeightAveraging
from torch.utils._python_dispatch import TorchDispatchMode

from callbacks import DeviceEMA


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5, momentum=0.9)


def _data():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 6, generator=g), torch.randint(0, 3, (96,), generator=g)
    return torch.utils.data.DataLoader(list(zip(x, y)), batch_size=16)


def _fit(callback, tmp_path, max_epochs=2):
    torch.manual_seed(0)
    model = Tiny()
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
        default_root_dir=tmp_path,
    )
    trainer.fit(model, _data())
    return model, trainer


def test_same_weights_as_lightning_ema(tmp_path):
    ref, _ = _fit(EMAWeightAveraging(decay=0.9), tmp_path / "a")
    ours, _ = _fit(DeviceEMA(decay=0.9), tmp_path / "b")
    raw, _ = _fit(pl.Callback(), tmp_path / "c")
    for (name, a), b, c in zip(ref.state_dict().items(), ours.state_dict().values(), raw.state_dict().values()):
        if a.is_floating_point():
            torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5, msg=name)
    # and the average is not the raw weights (the test can fail)
    assert not torch.allclose(ours.net[0].weight, raw.net[0].weight, atol=1e-3)


def test_update_does_not_sync_with_the_host(tmp_path):
    syncs = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.__name__.split(".")[0] in ("_local_scalar_dense", "is_nonzero", "nonzero"):
                syncs.append(func.__name__)
            return func(*args, **(kwargs or {}))

    watch = Watch()

    class Enter(pl.Callback):  # runs just before the EMA callback's hook ...
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            watch.__enter__()

    class Exit(pl.Callback):  # ... and just after it
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            watch.__exit__(None, None, None)

    for ema in (DeviceEMA(decay=0.9), EMAWeightAveraging(decay=0.9)):
        syncs.clear()
        torch.manual_seed(0)
        trainer = pl.Trainer(
            max_steps=4,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[Enter(), ema, Exit()],
        )
        trainer.fit(Tiny(), _data())
        if isinstance(ema, DeviceEMA):
            assert syncs == []
        else:  # what DeviceEMA avoids: AveragedModel.update_parameters reads n_averaged back
            assert len(syncs) >= 2 * 4


def test_bad_decay_is_named():
    with pytest.raises(ValueError, match="decay"):
        DeviceEMA(decay=1.5)


def test_before_the_first_update_the_live_weights_are_kept(tmp_path):
    with pytest.warns(UserWarning, match="never updated"):
        ours, _ = _fit(DeviceEMA(decay=0.9, update_starting_at_step=10**6), tmp_path / "a", max_epochs=1)
    raw, _ = _fit(pl.Callback(), tmp_path / "b", max_epochs=1)
    torch.testing.assert_close(ours.net[0].weight, raw.net[0].weight)
