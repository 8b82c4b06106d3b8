"""experiments/kap_scaling.py (make kap-scaling) on its tiny profile: the grid trains and evaluates,
the table / plot are written, KAP sits where the docstring says, and a rerun resumes."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from lightning_modules.nn.backbones import build_backbone
from lightning_modules.nn.kap import KernelAveragePool

REPO = Path(__file__).resolve().parent.parent


def load_script():
    spec = importlib.util.spec_from_file_location("kap_scaling", REPO / "experiments" / "kap_scaling.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["kap_scaling"] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("depth", [1, 3])
def test_kap_goes_after_every_conv_of_stages_2_and_3(depth):
    ks = load_script()
    kw = ks.backbone_kwargs(ks.PROFILES["cpu"], depth, 8, kap=True)
    net = build_backbone("small_cnn", **kw).net
    body = list(net.body)
    kaps = [i for i, m in enumerate(body) if isinstance(m, torch.nn.Sequential)]
    assert len(kaps) == 2 * depth
    for i in kaps:  # each wraps a ReLU that follows a conv of 2w or 4w channels
        assert isinstance(body[i][0], torch.nn.ReLU) and isinstance(body[i][1], KernelAveragePool)
        assert body[i - 1].num_features in (16, 32) and isinstance(body[i - 2], torch.nn.Conv2d)
    plain = build_backbone("small_cnn", **ks.backbone_kwargs(ks.PROFILES["cpu"], depth, 8, kap=False))
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in net.parameters())
    wrn = build_backbone("wide_resnet", **ks.backbone_kwargs(ks.PROFILES["gpu"], 16, 1, kap=True)).net
    assert [n for n, m in wrn.named_modules() if isinstance(m, KernelAveragePool)] == [
        "layer2.0.1",
        "layer2.1.1",
        "layer3.0.1",
        "layer3.1.1",
    ]


def test_tiny_grid_end_to_end_and_resume(tiny_cifar10, tmp_path, monkeypatch, capsys):
    import lightning_modules.attacks.autoattack as aa
    from lightning_modules.attacks.core import pgd

    monkeypatch.setenv("WANDB_MODE", "disabled")
    calls = []

    def quick_autoattack(model, x, y, eps, norm, seed):  # standard AA takes minutes even on 4 images
        calls.append(len(x))
        return pgd(model, x, y, eps, eps / 4, 2)

    monkeypatch.setattr(aa, "autoattack", quick_autoattack)
    ks = load_script()
    out = tmp_path / "scaling"
    argv = ["--profile", "tiny", "--data-dir", str(tiny_cifar10), "--out", str(out), "--eps", "0.0157"]
    records = ks.main(argv)
    assert len(records) == 4  # depth {1, 2} x width {4} x KAP {no, yes}
    by = {(r["depth"], r["kap"]): r for r in records}
    assert by[(2, False)]["params"] > by[(1, False)]["params"] == by[(1, True)]["params"]
    for r in records:
        assert all(0 <= r[m] <= 1 for m in ks.METRICS) and r["n_clean"] == 8 and r["n_autoattack"] == 4
    assert calls == [4, 4, 4, 4]  # the first n_autoattack test images of each grid point
    stored = json.loads((out / "scaling.json").read_text())["points"]
    assert sorted(stored) == sorted(ks.point_name(r) for r in records)
    assert "| cifar10 | 1 | 4 | yes |" in (out / "scaling.md").read_text()
    assert (out / "kap_scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a rerun with the same settings trains nothing; other settings retrain
    def no_training(*a, **k):
        raise RuntimeError("stored point retrained")

    monkeypatch.setattr(ks, "train", no_training)
    assert ks.main(argv) == records
    with pytest.raises(RuntimeError, match="retrained"):
        ks.main([*argv[:-1], "0.0314"])


def test_bad_arguments_fail_clearly(capsys):
    ks = load_script()
    with pytest.raises(SystemExit):
        ks.parse(["--eps", "8"])
    assert "--eps is in [0, 1] units" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="unknown dataset"):
        ks.main(["--profile", "tiny", "--datasets", "mnist"])
