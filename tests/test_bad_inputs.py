"""Bad inputs fail early with an error naming the culprit, exit non-zero from the CLI, and leave
existing outputs (checkpoints, predictions) untouched."""

from __future__ import annotations

import pickle
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from callbacks import PredictionWriter
from datamodules import CIFAR10DataModule, DataFileError, DeviceLoader
from lightning_modules import ReversalConfig, ReversalModule, build_backbone, pgd
from lightning_modules.cli import run_cli
from tests.cli_runs import lightning, tiny_args
from tests.conftest import write_cifar10


def small(**kw) -> ReversalModule:
    return ReversalModule(
        **{
            "backbone": "small_cnn",
            "backbone_kwargs": {"width": 4},
            "head_hidden": 8,
            "head_dim": 4,
            "inference": {"val_attack_steps": 0, **kw.pop("inference", {})},
            **kw,
        }
    )


def snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def rewrite(path: Path, **changes) -> None:
    with open(path, "rb") as f:
        d = pickle.load(f)  # our own test file
    d.update(changes)
    path.write_bytes(pickle.dumps(d))


# -- data files --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "case,file,match",
    [
        ("truncated", "data_batch_3", "corrupt or truncated|truncated"),
        ("wrong_shape", "test_batch", r"'data' must be uint8 of shape \(N, 3072\), got uint8 \(8, 1024\)"),
        ("labels_out_of_range", "data_batch_1", r"labels out of range \[0, 10\): min 0, max 12"),
    ],
)
def test_bad_data_files_name_the_file(tmp_path, case, file, match):
    data = write_cifar10(tmp_path / "data", n_train=20, n_test=8)
    path = data / "cifar-10-batches-py" / file
    if case == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif case == "wrong_shape":
        rewrite(path, data=np.zeros((8, 1024), np.uint8))
    else:
        rewrite(path, labels=[0, 12, 3, 4])
    with pytest.raises(DataFileError, match=match) as info:
        CIFAR10DataModule(str(data), strict_counts=False).setup(None)
    assert str(path) in str(info.value)


def test_cli_predict_on_bad_data_exits_nonzero_and_keeps_predictions(tmp_path):
    data = write_cifar10(tmp_path / "data", n_train=8, n_test=8)
    bad = data / "cifar-10-batches-py" / "test_batch"
    bad.write_bytes(bad.read_bytes()[:1000])
    root = tmp_path / "run"
    old = root / "preds" / "predictions.pt"
    old.parent.mkdir(parents=True)
    torch.save({"idx": torch.arange(3)}, old)
    before = snapshot(old)
    r = lightning("predict", *tiny_args(data, root, "--allow_untrained", "true", "--overwrite", "true"), cwd=tmp_path)
    assert r.returncode != 0
    assert f"{bad}: corrupt or truncated pickle" in r.stderr or f"{bad}: pickle data was truncated" in r.stderr
    assert snapshot(old) == before


# -- predict inputs ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad,match",
    [
        (float("nan"), "NaN or inf pixels"),
        (float("inf"), "NaN or inf pixels"),
        (1.5, r"must lie in \[0, 1\] \(got min .*, max 1.5\).*divide by 255"),
        (-0.1, r"must lie in \[0, 1\] \(got min -0.1"),
    ],
)
def test_predict_rejects_bad_pixels_and_keeps_predictions(tmp_path, bad, match):
    x = torch.rand(6, 3, 32, 32)
    x[2, 1, 5, 5] = bad
    batches = DeviceLoader(x, torch.zeros(6, dtype=torch.long), batch_size=6)  # float pixels, as from a user's loader
    out = tmp_path / "preds"
    out.mkdir()
    torch.save({"idx": torch.arange(3)}, out / "predictions.pt")
    before = snapshot(out / "predictions.pt")
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        inference_mode=False,
        enable_progress_bar=False,
        callbacks=[PredictionWriter(str(out), overwrite=True)],
    )
    with pytest.raises(ValueError, match="predict input.*" + match):
        trainer.predict(small(inference={"predict_attack": "none"}), dataloaders=batches)
    assert snapshot(out / "predictions.pt") == before
    assert sorted(p.name for p in out.iterdir()) == ["predictions.pt"]


# -- names --------------------------------------------------------------------------------------
def test_unknown_backbone_and_robustbench_names():
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet9000'; choose one of \[.*'preact_resnet18'"):
        build_backbone("resnet9000")
    with pytest.raises(ValueError, match="unknown backbone 'resnet9000'"):
        ReversalModule(backbone="resnet9000")
    with pytest.raises(
        ValueError, match=r"unknown RobustBench model 'Carmon2019Unlabeledd'.*did you mean \['Carmon2019Unlabeled'"
    ):
        ReversalModule(robustbench_model="Carmon2019Unlabeledd")
    with pytest.raises(ValueError, match="unknown RobustBench dataset 'cifar11'"):
        ReversalModule(robustbench_model="Standard", robustbench_dataset="cifar11")


# -- checkpoints of another architecture ---------------------------------------------------------
def test_checkpoint_for_another_architecture(tmp_path):
    wide = build_backbone("small_cnn", width=8)
    path = tmp_path / "small_cnn_w8.pt"
    torch.save(wide.state_dict(), path)
    with pytest.raises(
        RuntimeError,
        match=rf"checkpoint {path} does not fit backbone 'small_cnn' {{'width': 4}}: "
        r"size mismatch for net.body.0.weight: checkpoint \(8, 3, 3, 3\), model \(4, 3, 3, 3\)",
    ):
        small(backbone_checkpoint=str(path))
    with pytest.raises(RuntimeError, match=rf"checkpoint {path} does not fit backbone 'preact_resnet18'"):
        ReversalModule(backbone="preact_resnet18", backbone_checkpoint=str(path))
    # a Lightning checkpoint of another model, given to the Trainer
    other = small(backbone_kwargs={"width": 8})
    ckpt = tmp_path / "w8.ckpt"
    torch.save(
        {
            "state_dict": other.state_dict(),
            "hyper_parameters": dict(other.hparams),
            "epoch": 0,
            "global_step": 0,
            "pytorch-lightning_version": pl.__version__,
        },
        ckpt,
    )
    trainer = pl.Trainer(accelerator="cpu", logger=False, inference_mode=False, enable_progress_bar=False)
    batches = DeviceLoader(torch.rand(4, 3, 32, 32), torch.zeros(4, dtype=torch.long), batch_size=4)
    with pytest.raises(
        RuntimeError,
        match=rf"checkpoint {ckpt} does not fit this model \(backbone 'small_cnn' "
        r"{'width': 4}\); it was saved from 'small_cnn' {'width': 8}: shapes differ",
    ):
        trainer.validate(small(), dataloaders=batches, ckpt_path=str(ckpt), weights_only=True)
    with pytest.raises(RuntimeError, match=r"does not fit this model \(backbone 'preact_resnet18' {}\).*missing"):
        ReversalModule.load_from_checkpoint(ckpt, backbone="preact_resnet18", backbone_kwargs=None, weights_only=True)


# -- eps in pixels ------------------------------------------------------------------------------
def test_eps_in_pixels_is_rejected_with_the_fix():
    with pytest.raises(ValueError, match=r"eps=8 is larger than .*8/255 = 0.03137"):
        small(attack={"eps": 8})
    with pytest.raises(ValueError, match=r"eps=16 .*16/255 = 0.06275"):
        ReversalConfig(eps=16)
    with pytest.raises(ValueError, match=r"8/255 = 0.03137"):
        pgd(lambda x: x.flatten(1)[:, :10], torch.rand(2, 3, 4, 4), torch.zeros(2, dtype=torch.long), 8, 2 / 255, 1)


def test_cli_eps_in_pixels_exits_nonzero_and_keeps_last_checkpoint(tmp_path):
    data = write_cifar10(tmp_path / "data", n_train=8, n_test=8)
    root = tmp_path / "run"
    last = root / "checkpoints" / "tiny" / "last.ckpt"  # the experiment's existing checkpoint
    last.parent.mkdir(parents=True)
    torch.save({"global_step": 7}, last)
    before = snapshot(last)
    r = lightning(
        "fit", *tiny_args(data, root, "--model.init_args.attack.eps", "8", "--trainer.max_steps", "1"), cwd=tmp_path
    )
    assert r.returncode != 0
    assert "eps=8.0 is larger than the whole [0, 1] pixel range" in r.stderr and "8/255 = 0.03137" in r.stderr
    assert snapshot(last) == before and sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]


# -- config keys --------------------------------------------------------------------------------
def test_unknown_config_keys_are_named(tmp_path, capsys):
    data = write_cifar10(tmp_path / "data", n_train=8, n_test=8)
    typo = tmp_path / "typo.yaml"
    typo.write_text("trainer:\n  max_epoch: 3\n")
    with pytest.raises(SystemExit) as info:
        run_cli(["fit", *tiny_args(data, tmp_path / "run"), "--config", str(typo)])
    assert info.value.code != 0 and "trainer.max_epoch" in capsys.readouterr().err
    typo.write_text("model:\n  init_args:\n    ssl_wieght: 0.5\n")
    with pytest.raises(SystemExit) as info:
        run_cli(["fit", *tiny_args(data, tmp_path / "run"), "--config", str(typo)])
    assert info.value.code != 0 and "ssl_wieght" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        run_cli(["fit", *tiny_args(data, tmp_path / "run"), "--data.init_args.batch_sise", "4"])
    assert info.value.code != 0 and "batch_sise" in capsys.readouterr().err


def test_bare_state_dict_as_ckpt_path_is_named_with_the_fix(tmp_path, monkeypatch):
    from lightning_modules.cli_checks import CheckpointFileError

    monkeypatch.chdir(tmp_path)
    data = write_cifar10(tmp_path / "data", n_train=8, n_test=4)
    bare = tmp_path / "weights.pt"
    torch.save(build_backbone("small_cnn", width=4).state_dict(), bare)
    with pytest.raises(
        CheckpointFileError, match=rf"--ckpt_path {bare}: a bare state dict .*backbone_checkpoint {bare}"
    ):
        run_cli(["test", *tiny_args(data, tmp_path / "run", "--ckpt_path", str(bare))])
