"""Safe loading: planted pickles that would run code are refused with a clear message, and
nothing runs. Every load in the package is weights_only / restricted (checked on the source)."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
import torch

from datamodules import CIFAR10DataModule, DataFileError, safe_unpickle
from lightning_modules import ReversalModule
from lightning_modules.cli import UnsafeCheckpointError, run_cli
from lightning_modules.nn.backbones import build_backbone, load_state_dict
from tests.cli_runs import REPO, lightning, tiny_args
from tests.conftest import write_cifar10


class Payload:
    """Unpickling this calls ``open(marker, "w")``: the file appearing proves code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant_checkpoint(path: Path, marker: Path, **extra) -> Path:
    torch.save(
        {"state_dict": {"w": torch.zeros(1)}, "epoch": 0, "global_step": 0, "evil": Payload(marker), **extra}, path
    )
    return path


def test_payload_is_live(tmp_path):
    """The planted files really run code when loaded unsafely (so the tests below can fail)."""
    marker = tmp_path / "ran"
    torch.load(plant_checkpoint(tmp_path / "x.ckpt", marker), weights_only=False)
    assert marker.exists()
    marker.unlink()
    pickle.loads(pickle.dumps({"data": Payload(marker)}))
    assert marker.exists()


def test_planted_cifar_batch_is_refused(tmp_path):
    data = write_cifar10(tmp_path / "data", n_train=10, n_test=4)
    marker = tmp_path / "ran"
    bad = data / "cifar-10-batches-py" / "data_batch_2"
    bad.write_bytes(pickle.dumps({"data": Payload(marker), "labels": [0]}))
    with pytest.raises(DataFileError, match=r"data_batch_2.*refusing to load global 'io.open'"):
        safe_unpickle(bad)
    with pytest.raises(DataFileError, match="data_batch_2"):
        CIFAR10DataModule(str(data), strict_counts=False).setup("fit")
    assert not marker.exists()


def test_planted_weights_are_refused(tmp_path):
    marker = tmp_path / "ran"
    path = plant_checkpoint(tmp_path / "backbone.pt", marker)
    with pytest.raises(RuntimeError, match=r"refusing to load .*backbone.pt with weights_only=True"):
        load_state_dict(path)
    with pytest.raises(RuntimeError, match="backbone.pt"):
        ReversalModule(backbone="small_cnn", backbone_kwargs={"width": 4}, backbone_checkpoint=str(path))
    with pytest.raises(RuntimeError, match="backbone.pt"):
        build_backbone("small_cnn", weights_path=str(path), width=4)
    assert not marker.exists()


def test_planted_robustbench_weights_are_refused(tmp_path):
    marker = tmp_path / "ran"
    folder = tmp_path / "models" / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    plant_checkpoint(folder / "Standard.pt", marker)
    from lightning_modules.nn.robustbench_models import load_robustbench

    with pytest.raises(RuntimeError, match=r"Standard\.pt"):
        load_robustbench("Standard", "cifar10", "Linf", model_dir=str(tmp_path / "models"))
    assert not marker.exists()


def test_planted_checkpoint_via_cli_ckpt_path(tmp_path):
    """``lightning test --ckpt_path evil.ckpt`` exits non-zero naming the file; nothing runs."""
    data = write_cifar10(tmp_path / "data", n_train=8, n_test=4)
    marker = tmp_path / "ran"
    evil = plant_checkpoint(tmp_path / "evil.ckpt", marker, hyper_parameters={"backbone": "small_cnn"})
    r = lightning("test", *tiny_args(data, tmp_path / "run", "--ckpt_path", str(evil)), cwd=tmp_path)
    assert r.returncode != 0
    assert f"refusing to load checkpoint {evil}" in r.stderr and "--weights_only false" in r.stderr
    assert not marker.exists()


def test_planted_last_checkpoint_on_resume(tmp_path, monkeypatch):
    """``--ckpt_path last`` (resolved by the Trainer, loaded with the CLI's weights_only=True default)."""
    monkeypatch.chdir(tmp_path)
    data = write_cifar10(tmp_path / "data", n_train=8, n_test=4)
    marker = tmp_path / "ran"
    root = tmp_path / "run"
    args = tiny_args(data, root, "--ckpt_path", "last", "--trainer.max_steps", "1")
    ckdir = root / "checkpoints" / "tiny"  # the experiment's checkpoint folder (tiny.yaml)
    ckdir.mkdir(parents=True)
    plant_checkpoint(ckdir / "last.ckpt", marker)
    with pytest.raises(UnsafeCheckpointError, match=rf"refusing to load checkpoint {ckdir / 'last.ckpt'}"):
        run_cli(["fit", *args])
    assert not marker.exists()
    # the explicit opt-out is what makes it load in full (the file is not a real checkpoint, so it fails after)
    with pytest.raises(KeyError, match="pytorch-lightning_version"):
        run_cli(["fit", *args, "--weights_only", "false"])
    assert marker.exists()


@pytest.mark.parametrize("schedule", ["onecycle", "multistep"])
def test_our_checkpoints_load_with_weights_only(tmp_path, schedule):
    """Checkpoints of a module built in Python (a ReversalConfig dataclass, LR-scheduler state with a
    Counter) hold only types that ``weights_only=True`` accepts, and load back into the same settings."""
    import lightning.pytorch as pl

    from callbacks import AtomicCheckpoint
    from lightning_modules import ReversalConfig

    data = write_cifar10(tmp_path / "data", n_train=16, n_test=4)
    model = ReversalModule(
        backbone="small_cnn",
        backbone_kwargs={"width": 4},
        head_hidden=8,
        head_dim=4,
        reversal=ReversalConfig(steps=3, n_views=2),
        optim=dict(schedule=schedule),
        inference=dict(val_attack_steps=0),
    )
    trainer = pl.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        callbacks=[AtomicCheckpoint(dirpath=tmp_path / "ck", save_last=True)],
    )
    trainer.fit(model, CIFAR10DataModule(str(data), batch_size=8, strict_counts=False))
    ck = torch.load(tmp_path / "ck" / "last.ckpt", weights_only=True)
    assert ck["hyper_parameters"]["reversal"]["steps"] == 3 and ck["lr_schedulers"]
    back = ReversalModule.load_from_checkpoint(tmp_path / "ck" / "last.ckpt", weights_only=True)
    assert back.reversal_cfg == model.reversal_cfg
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), model.state_dict().values()))


# -- every load in the package is safe: a static check over the source -----------------------------
PACKAGES = ("lightning_modules", "datamodules", "callbacks")


def _unsafe_loads(source: str) -> list[str]:
    bad = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
        kw = {k.arg: k.value for k in node.keywords}
        name = f"{owner}.{node.func.attr}"
        if name == "torch.load":
            wo = kw.get("weights_only")
            safe = isinstance(wo, ast.Constant) and wo.value is True
            trusted = wo is not None and "trust" in ast.unparse(wo)  # weights_only=not trust (opt-in)
            if not (safe or trusted):
                bad.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif name in ("pickle.load", "pickle.loads", "dill.load", "joblib.load", "cloudpickle.load"):
            bad.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif name in ("np.load", "numpy.load"):
            ap = kw.get("allow_pickle")
            if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                bad.append(f"line {node.lineno}: {ast.unparse(node)}")
    return bad


def test_audit_flags_unsafe_calls():
    src = (
        "torch.load(p)\ntorch.load(p, weights_only=False)\npickle.load(f)\nnp.load(p, allow_pickle=True)\n"
        "torch.load(p, weights_only=True)\ntorch.load(p, weights_only=not trust)\nnp.load(p)\n"
    )
    assert len(_unsafe_loads(src)) == 4


def test_every_load_in_the_package_is_safe():
    found = {}
    for pkg in PACKAGES:
        for f in sorted((REPO / pkg).rglob("*.py")):
            bad = _unsafe_loads(f.read_text())
            if bad:
                found[str(f.relative_to(REPO))] = bad
    assert not found, f"loads that could run code (use weights_only=True / datamodules.files.safe_unpickle): {found}"
