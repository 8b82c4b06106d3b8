"""CorruptionReport end to end: `lightning test` with experiments/cifar10/corruptions.yaml on a tiny
synthetic CIFAR-10-C and a tiny model; the tables are checked against direct forward passes."""

from __future__ import annotations

import json

import numpy as np
import torch

from callbacks.corruption_report import markdown_table, summarize
from lightning_modules.cli import run_cli
from tests.cli_runs import REPO
from tests.datamodules.test_corruption_sets import write_cifar_c


def test_summarize_and_markdown():
    s = summarize({"fog/1": 0.5, "fog/2": 0.25, "snow/1": 1.0, "snow/2": 0.75})
    assert s["table"] == {"fog": {"1": 0.5, "2": 0.25}, "snow": {"1": 1.0, "2": 0.75}}
    assert s["mean_per_corruption"] == {"fog": 0.375, "snow": 0.875}
    assert s["mean_per_severity"] == {"1": 0.75, "2": 0.5} and s["mean"] == 0.625
    md = markdown_table(s, "t")
    assert "| fog | 50.00 | 25.00 | 37.50 |" in md and "**62.50**" in md


def test_lightning_test_writes_the_report(tmp_path, monkeypatch):
    root, y = write_cifar_c(tmp_path / "data", n=6, corruptions=("fog", "snow", "contrast"))
    rng = np.random.default_rng(0)
    for c in ("fog", "snow", "contrast"):  # varied images so predictions differ between sets
        np.save(root / "CIFAR-10-C" / f"{c}.npy", rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8))
    monkeypatch.chdir(tmp_path)  # the config writes results/ and logs/ relative to the working directory
    torch.manual_seed(0)
    cli = run_cli(
        [
            "test",
            "--config",
            str(REPO / "experiments/cifar10/corruptions.yaml"),
            "--model",
            "lightning_modules.ReversalModule",
            "--model.init_args.backbone",
            "small_cnn",
            "--model.init_args.backbone_kwargs",
            '{"width": 8}',
            "--model.init_args.reversal",
            '{"steps": 2, "n_views": 2}',
            "--data.init_args.data_dir",
            str(root),
            "--data.init_args.corruptions",
            "[fog, snow]",
            "--data.init_args.severities",
            "[2, 5]",
            "--data.init_args.n_examples",
            "5",
            "--data.init_args.eval_batch_size",
            "4",
            "--trainer.accelerator",
            "cpu",
            "--trainer.devices",
            "1",
            "--trainer.enable_progress_bar",
            "false",
            "--allow_untrained",
            "true",
        ]
    )
    out = tmp_path / "results/corruptions/cifar10"
    report = json.loads((out / "corruption_report.json").read_text())
    assert list(report["sets"]) == ["fog/2", "fog/5", "snow/2", "snow/5"]
    model = cli.model.eval()
    for name, r in report["sets"].items():
        c, s = name.split("/")
        x = torch.from_numpy(np.load(root / "CIFAR-10-C" / f"{c}.npy")[(int(s) - 1) * 6 : (int(s) - 1) * 6 + 5])
        with torch.no_grad():
            pred = model.model_fn(x.permute(0, 3, 1, 2).float() / 255).argmax(1)
        assert r["n"] == 5
        assert abs(r["acc"] - float((pred == torch.from_numpy(y[:5])).float().mean())) < 1e-6
        assert 0 <= r["acc_reversed"] <= 1
    for key in ("no_reversal", "reversal"):
        s = report[key]
        assert set(s["table"]) == {"fog", "snow"} and set(s["mean_per_severity"]) == {"2", "5"}
        accs = [r["acc" if key == "no_reversal" else "acc_reversed"] for r in report["sets"].values()]
        assert abs(s["mean"] - sum(accs) / 4) < 1e-9
    assert report["reversal_config"]["steps"] == 2
    md = (out / "corruption_report.md").read_text()
    assert "without reversal" in md and "after reversal" in md and md.count("| fog |") == 2
    png = (out / "corruption_heatmap.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert not list(out.glob("*.tmp-*"))
    logged = cli.trainer.callback_metrics
    assert abs(float(logged["test/corruption_mean_acc"]) - report["no_reversal"]["mean"]) < 1e-6


def test_wandb_table_rows(tmp_path):
    from types import SimpleNamespace

    from callbacks.corruption_report import CorruptionReport

    calls = {}

    class WandbLogger:  # the callback recognises the logger by its class name
        def log_table(self, key, columns, data):
            calls["table"] = (key, columns, data)

        def log_image(self, key, images):
            calls["image"] = (key, images)

    sets = {"fog/2": {"n": 5, "acc": 0.4, "acc_reversed": 0.6}, "snow/5": {"n": 5, "acc": 0.2}}
    CorruptionReport._log_wandb(SimpleNamespace(loggers=[WandbLogger()]), sets, tmp_path / "h.png")
    key, cols, rows = calls["table"]
    assert key == "test/corruptions" and cols == ["corruption", "severity", "n", "acc", "acc_reversed"]
    assert rows == [["fog", 2, 5, 0.4, 0.6], ["snow", 5, 5, 0.2, None]]
    assert calls["image"] == ("test/corruption_heatmap", [str(tmp_path / "h.png")])


def test_repeats_from_padded_shards_count_once():
    from types import SimpleNamespace

    from callbacks import CorruptionReport

    res = {"idx": [torch.tensor([2, 0]), torch.tensor([0, 1, 3])]}  # idx 0 twice: its first result counts
    res["correct"] = [torch.tensor([1, 0]), torch.tensor([1, 1, 0])]
    assert CorruptionReport()._gather(SimpleNamespace(world_size=1), None, "correct", res) == (4, 0.5)
    empty = {"idx": [torch.tensor([], dtype=torch.long)], "correct": [torch.tensor([])]}
    n, acc = CorruptionReport()._gather(SimpleNamespace(world_size=1), None, "correct", empty)
    assert n == 0 and acc != acc  # nan
