"""``lightning test --config experiments/cifar10/eval.yaml --ckpt_path ...`` end to end on tiny
data: the report files, the printed table, resuming, merging rank parts, refusing another model's
results, and a RobustBench backbone + trained head."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from callbacks.robust_eval import RobustEvaluation, model_fingerprint
from lightning_modules.cli import run_cli
from lightning_modules.evaluation import EvalConfig, ResultStore, RobustEvaluator
from tests.conftest import write_cifar10

REPO = Path(__file__).resolve().parents[2]
EVAL = str(REPO / "experiments" / "cifar10" / "eval.yaml")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only add overhead


def common(data: Path, root: Path) -> list[str]:
    return ["--data.init_args.data_dir", str(data), "--data.init_args.strict_counts", "false",
            "--data.init_args.batch_size", "16", "--data.init_args.eval_batch_size", "4",
            "--data.init_args.n_examples", "8",
            "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false",
            "--trainer.default_root_dir", str(root / "logs"), "--trainer.logger.init_args.save_dir", str(root / "logs")]


def fast_eval(out: Path) -> list[str]:
    """The callback of eval.yaml with settings that run in seconds (every attack kind still runs)."""
    cb = "--trainer.callbacks.init_args."
    return [cb + "output_dir", str(out), cb + "threat_models", "{Linf: 8/255}", cb + "attacks", "[pgd, apgd-ce]",
            cb + "steps", "2", cb + "apgd_steps", "2", cb + "adaptive_steps", "1", cb + "eot_samples", "1",
            cb + "full_gradient_steps", "1", cb + "transfer_steps", "2", cb + "reversal", "{steps: 1}",
            cb + "eps_sweep", "[0/255, 64/255]", cb + "eps_sweep_attacks", "[pgd]",
            cb + "attack_steps_sweep", "[1, 2]", cb + "steps_sweep_attacks", "[pgd]",
            cb + "reversal_steps_sweep", "[0, 1]", cb + "eps_sweep_n", "4", cb + "steps_sweep_n", "4",
            cb + "n_images", "4"]


def fit_tiny(data: Path, root: Path, name: str, *extra: str):
    cli = run_cli(["fit", "--model.class_path", "lightning_modules.ReversalModule",
                   "--model.init_args.backbone", "small_cnn", "--model.init_args.backbone_kwargs", "{width: 4}",
                   "--model.init_args.head_hidden", "16", "--model.init_args.head_dim", "8",
                   "--model.init_args.val_attack_steps", "0", "--model.init_args.views_backend", "fast",
                   "--model.init_args.reversal", "{steps: 2, n_views: 2, views: fast}",
                   "--model.init_args.schedule", "constant", "--model.init_args.lr", "0.02",
                   "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0",
                   "--trainer.callbacks", "[]", "--data.class_path", "datamodules.CIFAR10DataModule",
                   *common(data, root), *extra])
    ckpt = root / f"{name}.ckpt"
    cli.trainer.save_checkpoint(ckpt)
    return cli.model, ckpt


def test_eval_yaml_end_to_end_report_resume_and_refusal(tmp_path: Path, capsys, monkeypatch):
    data = write_cifar10(tmp_path / "data", n_train=32, n_test=16, learnable=True)
    model, ckpt = fit_tiny(data, tmp_path, "a")
    out = tmp_path / "eval"
    cli = run_cli(["test", "--config", EVAL, "--ckpt_path", str(ckpt), *common(data, tmp_path), *fast_eval(out)])
    cb = next(c for c in cli.trainer.callbacks if isinstance(c, RobustEvaluation))
    s = cb.summary
    # the report: files in output_dir and the run's log dir, parsed back; the table printed
    for name in ("robustness.json", "robustness.md", "robust_acc_vs_eps.png", "acc_vs_reversal_steps.png",
                 "reversal_grid.png", "per_example.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "robustness.json").read_text()) == json.loads(json.dumps(s))
    assert (Path(cli.trainer.log_dir) / "robustness" / "robustness.md").read_text() == (out / "robustness.md").read_text()
    printed = capsys.readouterr().out
    assert "| Threat model | Attack | Type | Without reversal | With reversal | n |" in printed
    assert "worst case per example" in printed
    attacks = [r["attack"] for r in s["rows"]]
    assert attacks == ["pgd", "apgd-ce", "defense_aware", "bpda_eot", "full_gradient", "transfer"]
    assert all(r["n"] == 8 for r in s["rows"]) and s["clean"]["n"] == 8
    assert s["meta"]["weights_sha1"] == model_fingerprint(model)  # the checkpoint's weights were evaluated
    assert s["meta"]["reversal"]["steps"] == 1 and s["meta"]["checkpoint"] == str(ckpt)
    assert s["sanity"] and {r["attack"] for r in s["sweeps"]["eps"]} == {"pgd"}
    m = cli.trainer.callback_metrics
    assert "test/clean_acc" in m and "test/pgd_acc" not in m  # test_step stays light with the callback
    assert abs(float(m["eval/clean_acc"]) - s["clean"]["without"]) < 1e-6
    assert "eval/Linf_8_255/robust_acc_reversed" in m

    # resume: nothing is recomputed; a part left by another rank is merged by idx
    part = ResultStore(json.loads((out / "per_example.json").read_text())["meta"])
    part.add("clean|without", [100], [True])
    part.save(out / "per_example.rank1.json")

    def no_attacks(*a, **k):
        raise AssertionError("resumed run recomputed an attack")

    monkeypatch.setattr(RobustEvaluator, "craft", no_attacks)
    cli = run_cli(["test", "--config", EVAL, "--ckpt_path", str(ckpt), *common(data, tmp_path), *fast_eval(out)])
    s2 = next(c for c in cli.trainer.callbacks if isinstance(c, RobustEvaluation)).summary
    for r1, r2 in zip(s["rows"], s2["rows"]):
        assert r1 == r2, (r1, r2)
    assert s2["n_examples"] == 9 and s2["clean"] == s["clean"]
    assert not list(out.glob("per_example.rank*.json"))
    monkeypatch.undo()

    # results of other weights are refused, naming the file
    _, other = fit_tiny(data, tmp_path, "b", "--seed_everything", "1")
    with pytest.raises(ValueError, match="per_example.json holds results of a different evaluation"):
        run_cli(["test", "--config", EVAL, "--ckpt_path", str(other), *common(data, tmp_path), *fast_eval(out)])


def test_robustbench_backbone_with_trained_head(tmp_path: Path, monkeypatch):
    """``ReversalModule(robustbench_model=...)`` trains the head only; ``--ckpt_path`` rebuilds the
    module from the checkpoint's hyperparameters (RobustBench name included) and evaluates the
    checkpoint's weights. The zoo loader is replaced by a tiny network (no weights on this machine)."""
    import lightning_modules.robustbench_models as rb

    def tiny_zoo_model(name, dataset="cifar10", threat_model="Linf", model_dir="models", trust=False):
        assert name == "Standard" and threat_model == "Linf"
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, 10)).eval()

    monkeypatch.setattr(rb, "load_robustbench", tiny_zoo_model)
    data = write_cifar10(tmp_path / "data", n_train=32, n_test=16, learnable=True)
    model, ckpt = fit_tiny(data, tmp_path, "rb", "--model.init_args.robustbench_model", "Standard")
    assert model.freeze_backbone and not any(p.requires_grad for p in model.classifier.parameters())
    out = tmp_path / "eval"
    cb = "--trainer.callbacks.init_args."
    cli = run_cli(["test", "--config", EVAL, "--ckpt_path", str(ckpt), *common(data, tmp_path), *fast_eval(out),
                   cb + "attacks", "[pgd]", cb + "adaptive", "[bpda_eot]"])
    assert cli.model.hparams.robustbench_model == "Standard"
    s = next(c for c in cli.trainer.callbacks if isinstance(c, RobustEvaluation)).summary
    assert s["meta"]["weights_sha1"] == model_fingerprint(model)
    assert s["meta"]["model"] == "ReversalModule (Standard)"
    assert [r["attack"] for r in s["rows"]] == ["pgd", "bpda_eot"]
    assert not s["meta"]["config"]["standard_model"]  # a zoo backbone: no standard-model check


def test_callback_defaults_are_the_engine_defaults():
    cb = RobustEvaluation()
    assert EvalConfig(**cb._cfg_kwargs) == EvalConfig()
    with pytest.raises(ValueError, match="unknown attacks"):
        RobustEvaluation(attacks=["fgsm"])
