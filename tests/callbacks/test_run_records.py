"""What a robustness evaluation records besides its per-example results: the report's copies in
``output_dir`` and the run's own folder, the grid beside them, the printed warning and the W&B records."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch

from callbacks.run_records import model_fingerprint, publish, report_dirs
from lightning_modules.defense import DefendedModel
from lightning_modules.evaluation import RobustEvaluator
from tests.lightning_modules.evaluation.flat import flat_config

N = 10


def failing_summary() -> dict:
    """A hand-filled evaluation whose eps->large check fails (the headline is unreliable)."""
    cfg = flat_config(
        threat_models={"Linf": "8/255"},
        attacks=["pgd"],
        draws=1,
        composition=[],
        eps_sweep=["64/255"],
        eps_sweep_attacks=["pgd"],
        attack_steps_sweep=[],
        eot_sweep=[],
        reversal_steps_sweep=[],
        standard_model=False,
        progress=False,
    )
    f = lambda x: x  # noqa: E731  (never called: the store is filled by hand)
    ev = RobustEvaluator(DefendedModel.of(f, f, f, reverse_diff_fn=f), cfg)
    ev.store.add("clean|without", range(N), [1] * N)
    ev.store.add("clean|with", range(N), [1] * N)
    for row in ev.catalog():
        ev.store.add(f"{row.key}|without", range(N), [1] * 5 + [0] * 5)
        if "with" in row.columns:
            ev.store.add(f"{row.key}|with", range(N), [1] * N)
    return ev.summary()


class WandbLogger:
    def __init__(self, files: Path) -> None:
        self.experiment = SimpleNamespace(dir=str(files), summary={})
        self.calls: dict = {}

    def log_table(self, key, columns, data):
        self.calls["table"] = (key, columns, data)

    def log_image(self, key, images):
        self.calls["image"] = (key, images)


def test_publish_writes_both_copies_then_the_grid_warns_and_logs(tmp_path: Path, capsys):
    summary = failing_summary()
    assert not summary["reliable"]
    out, wandb = tmp_path / "eval", WandbLogger(tmp_path / "wandb_files")
    trainer = SimpleNamespace(loggers=[wandb], log_dir=str(tmp_path / "logs"))
    dirs = report_dirs(out, trainer)
    assert dirs == [out, tmp_path / "wandb_files" / "robustness"]  # the W&B run's files before the log dir
    grid = torch.rand(3, 8, 8)

    def make_grid() -> torch.Tensor:
        assert all((d / "robustness.md").is_file() for d in dirs)  # the report is on disk before the grid runs
        return grid

    paths = publish(trainer, summary, out, make_grid, print_report=True)
    assert paths["grid"] == out / "reversal_grid.png" and paths["markdown"] == out / "robustness.md"
    for d in dirs:
        assert json.loads((d / "robustness.json").read_text()) == json.loads(json.dumps(summary, default=str))
        assert (d / "reversal_grid.png").is_file()
        assert not [p for p in d.iterdir() if "tmp" in p.name]
    printed = capsys.readouterr().out
    assert "| Threat model |" in printed and "robustness sanity check(s) FAILED" in printed
    assert str(out / "robustness.md") in printed
    key, cols, data = wandb.calls["table"]
    assert key == "eval/robustness" and len(cols) == 11 and all(len(r) == 11 for r in data)
    assert data[0][:4] == ["clean", "0", "none", "-"] and data[-1][2] == "worst case per example (UNRELIABLE)"
    assert wandb.experiment.summary["eval/headline_reliable"] is False
    assert wandb.experiment.summary["eval/sanity_failed_names"]
    assert wandb.calls["image"] == ("eval/x__x_adv__x_rev__diffs", [grid])


def test_publish_without_a_grid_or_a_second_folder(tmp_path: Path, capsys):
    out = tmp_path / "eval"
    trainer = SimpleNamespace(loggers=[], log_dir=None)
    paths = publish(trainer, failing_summary(), out, lambda: None, print_report=False)
    assert "grid" not in paths and not (out / "reversal_grid.png").exists()
    assert report_dirs(out, trainer) == [out]
    assert "| Threat model |" not in capsys.readouterr().out
    same = tmp_path / "robustness"  # the run's folder is output_dir itself: one copy
    assert report_dirs(same, SimpleNamespace(loggers=[], log_dir=str(tmp_path))) == [same]


def test_fingerprint_sees_names_shapes_and_values():
    a = torch.nn.Linear(2, 1)
    b = torch.nn.Linear(2, 1)
    b.load_state_dict(a.state_dict())
    assert model_fingerprint(a) == model_fingerprint(b)
    with torch.no_grad():
        b.weight[0, 0] += 1
    assert model_fingerprint(a) != model_fingerprint(b)
    wide, tall = torch.nn.Linear(2, 1, bias=False), torch.nn.Linear(1, 2, bias=False)
    for m in (wide, tall):
        torch.nn.init.zeros_(m.weight)
    assert model_fingerprint(wide) != model_fingerprint(tall)  # same bytes, other shape
