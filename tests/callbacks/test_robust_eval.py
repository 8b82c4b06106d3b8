"""``lightning test --config experiments/cifar10/eval.yaml --ckpt_path ...`` end to end on tiny
data: the report files, the printed table, resuming, merging rank parts, refusing the results of
another evaluation, a RobustBench backbone + trained head, and SIGTERM."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from callbacks.robust_eval import RobustEvaluation
from callbacks.run_records import model_fingerprint
from lightning_modules.cli import run_cli
from lightning_modules.evaluation import ResultStore, registry
from tests.cli_runs import popen_lightning
from tests.conftest import write_cifar10

REPO = Path(__file__).resolve().parents[2]
EVAL = str(REPO / "experiments" / "cifar10" / "eval.yaml")
CB = "--trainer.callbacks.init_args."
FAST = (
    "{threat_models: {Linf: 8/255}, attacks: [pgd, apgd-ce, bpda_eot, apgd_ce_bpda, transfer], progress: false, "
    "scoring: {draws: 2, composition: [batch2], judge_draws: 1}, attack: {steps: 2, apgd_steps: 2, eot: 1}, "
    "adaptive: {adaptive_steps: 1, adaptive_n: null}, sweeps: {eps_sweep: [0/255, 64/255], eps_sweep_attacks: [pgd], "
    "eps_sweep_n: 4, attack_steps_sweep: [1, 2], steps_sweep_attacks: [pgd], eot_sweep: [], "
    "reversal_steps_sweep: [0, 1], steps_sweep_n: 4}}"
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only add overhead


def common(data: Path, root: Path, eval_batch: int = 4) -> list[str]:
    return [
        "--data.init_args.data_dir",
        str(data),
        "--data.init_args.strict_counts",
        "false",
        "--data.init_args.batch_size",
        "16",
        "--data.init_args.eval_batch_size",
        str(eval_batch),
        "--data.init_args.n_examples",
        "8",
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.default_root_dir",
        str(root / "logs"),
        "--trainer.logger.init_args.save_dir",
        str(root / "logs"),
    ]


def fast_eval(out: Path, config: str = FAST) -> list[str]:
    steps = ["--model.init_args.reversal.steps", "1"]  # the model's reversal: wins over the checkpoint's
    return [CB + "output_dir", str(out), CB + "config", config, *steps, CB + "n_images", "4"]


def fit_tiny(data: Path, root: Path, name: str, *extra: str):
    cli = run_cli(
        [
            "fit",
            "--model.class_path",
            "lightning_modules.ReversalModule",
            "--model.init_args.backbone",
            "small_cnn",
            "--model.init_args.backbone_kwargs",
            "{width: 4}",
            "--model.init_args.head_hidden",
            "16",
            "--model.init_args.head_dim",
            "8",
            "--model.init_args.inference.val_attack_steps",
            "0",
            "--model.init_args.ssl.views",
            "fast",
            "--model.init_args.reversal",
            "{steps: 2, n_views: 2, views: fast}",
            "--model.init_args.optim.schedule",
            "constant",
            "--model.init_args.optim.lr",
            "0.02",
            "--trainer.max_steps",
            "2",
            "--trainer.limit_val_batches",
            "0",
            "--trainer.callbacks",
            "[]",
            "--data.class_path",
            "datamodules.CIFAR10DataModule",
            *common(data, root),
            *extra,
        ]
    )
    ckpt = root / f"{name}.ckpt"
    cli.trainer.save_checkpoint(ckpt)
    return cli.model, ckpt


def summary_of(cli) -> dict:
    return next(c for c in cli.trainer.callbacks if isinstance(c, RobustEvaluation)).summary


def test_eval_yaml_end_to_end_report_resume_and_refusals(tmp_path: Path, capsys, monkeypatch):
    data = write_cifar10(tmp_path / "data", n_train=32, n_test=16, learnable=True)
    model, ckpt = fit_tiny(data, tmp_path, "a")
    _, other = fit_tiny(data, tmp_path, "b", "--seed_everything", "1")
    out = tmp_path / "eval"
    args = [
        "test",
        "--config",
        EVAL,
        "--ckpt_path",
        str(ckpt),
        *common(data, tmp_path),
        *fast_eval(out),
        CB + "transfer_from",
        str(other),
    ]
    cli = run_cli(args)
    s = summary_of(cli)
    for name in (
        "robustness.json",
        "robustness.md",
        "robust_acc_vs_eps.png",
        "acc_vs_reversal_steps.png",
        "reversal_grid.png",
        "per_example.json",
    ):
        assert (out / name).is_file(), name
    assert json.loads((out / "robustness.json").read_text()) == json.loads(json.dumps(s))
    run_md = Path(cli.trainer.log_dir) / "robustness" / "robustness.md"
    assert run_md.read_text() == (out / "robustness.md").read_text()
    printed = capsys.readouterr().out
    assert "| Threat model | Attack | Type | Without reversal | With reversal (all 2 draws) |" in printed
    assert "worst case per example" in printed
    assert [r["attack"] for r in s["rows"]] == ["pgd", "apgd-ce", "bpda_eot", "apgd_ce_bpda", "transfer"]
    assert all("with@batch2" in r for r in s["rows"]) and s["clean"]["n"] == 8
    # eval.yaml's cascade: the reference row (PGD on the classifier) on every image, the others
    # (APGD-CE on the classifier, the rows on the defense) on the still-robust only
    assert s["rows"][0]["n"] == 8 and not s["rows"][0]["cascade"]
    assert all(r["cascade"] and r["n"] <= 8 for r in s["rows"][1:]) and s["worst_case"][0]["n"] == 8
    assert s["meta"]["weights_sha1"] == model_fingerprint(model)  # the checkpoint's weights were evaluated
    assert s["meta"]["reversal"]["steps"] == 1 and s["meta"]["checkpoint"] == str(ckpt)
    assert s["meta"]["data"]["eval_batch_size"] == 4 and s["meta"]["world_size"] == 1
    assert s["meta"]["versions"]["torch"] and s["meta"]["transfer_from_sha1"]
    m = cli.trainer.callback_metrics
    assert "test/clean_acc" in m and "test/pgd_acc" not in m  # test_step stays light with the callback
    assert abs(float(m["eval/clean_acc"]) - s["clean"]["without"]) < 1e-6
    assert "eval/Linf_8_255/robust_acc_reversed" in m and "eval/headline_reliable" in m

    # resume: nothing is recomputed; a part left by another rank is merged by idx
    part = ResultStore(json.loads((out / "per_example.json").read_text())["meta"])
    part.add("clean|without", [100], [True])
    part.save(out / "per_example.rank1.json")
    for name, a in list(registry.ATTACKS.items()):
        monkeypatch.setitem(
            registry.ATTACKS,
            name,
            a.__class__(
                **{
                    **a.__dict__,
                    "craft": (lambda j: (_ for _ in ()).throw(AssertionError("resumed run recomputed an attack"))),
                }
            ),
        )
    s2 = summary_of(run_cli(args))
    assert s2["rows"] == s["rows"] and s2["n_examples"] == 9
    assert not list(out.glob("per_example.rank*.json"))
    monkeypatch.undo()

    # results of other weights, or of another batch layout, are refused naming what differs
    with pytest.raises(
        ValueError,
        match=r"per_example.json holds results of a different evaluation \(differs in "
        r"\['transfer_from_sha1', 'weights_sha1'\]\)",
    ):
        run_cli(["test", "--config", EVAL, "--ckpt_path", str(other), *common(data, tmp_path), *fast_eval(out)])
    with pytest.raises(ValueError, match=r"differs in \['data.eval_batch_size'\]"):
        run_cli(
            [
                "test",
                "--config",
                EVAL,
                "--ckpt_path",
                str(ckpt),
                *common(data, tmp_path, eval_batch=8),
                *fast_eval(out),
                CB + "transfer_from",
                str(other),
            ]
        )
    with pytest.raises(ValueError, match="holds the evaluated model's own weights"):
        run_cli(
            [
                "test",
                "--config",
                EVAL,
                "--ckpt_path",
                str(ckpt),
                *common(data, tmp_path),
                *fast_eval(out),
                CB + "transfer_from",
                str(ckpt),
                CB + "resume",
                "false",
            ]
        )


def test_robustbench_backbone_with_trained_head(tmp_path: Path, monkeypatch):
    """``ReversalModule(robustbench_model=...)`` trains the head only; ``--ckpt_path`` rebuilds the
    module from the checkpoint's hyperparameters and evaluates the checkpoint's weights. The zoo
    loader is replaced by a tiny network (no weights on this machine)."""
    import lightning_modules.nn.robustbench_models as rb

    def tiny_zoo_model(name, dataset="cifar10", threat_model="Linf", model_dir="models", trust=False):
        assert name == "Standard" and threat_model == "Linf"
        return nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)
        ).eval()

    monkeypatch.setattr(rb, "load_robustbench", tiny_zoo_model)
    data = write_cifar10(tmp_path / "data", n_train=32, n_test=16, learnable=True)
    model, ckpt = fit_tiny(data, tmp_path, "rb", "--model.init_args.robustbench_model", "Standard")
    assert model.freeze_backbone and not any(p.requires_grad for p in model.classifier.parameters())
    cli = run_cli(
        [
            "test",
            "--config",
            EVAL,
            "--ckpt_path",
            str(ckpt),
            *common(data, tmp_path),
            *fast_eval(tmp_path / "eval", FAST.replace("apgd-ce, bpda_eot, apgd_ce_bpda, transfer", "bpda_eot")),
        ]
    )
    assert cli.model.hparams.robustbench_model == "Standard"
    s = summary_of(cli)
    assert s["meta"]["weights_sha1"] == model_fingerprint(model)
    assert s["meta"]["model"] == "ReversalModule (Standard)"
    assert [r["attack"] for r in s["rows"]] == ["pgd", "bpda_eot"]
    assert s["meta"]["config"]["checks"]["standard_model"] is False  # a zoo backbone: no standard-model check
    assert "transfer" not in s["meta"]["skipped"]  # not asked for


def test_sigterm_stops_within_a_row_with_everything_saved(tmp_path: Path):
    """A SIGTERM during the evaluation (a preempted job) stops it before the next row, with every finished
    row in the store; the same command then resumes and finishes."""
    data = write_cifar10(tmp_path / "data", n_train=32, n_test=16, learnable=True)
    _, ckpt = fit_tiny(data, tmp_path, "a")
    out = tmp_path / "eval"
    slow = FAST.replace(
        "attacks: [pgd, apgd-ce, bpda_eot, apgd_ce_bpda, transfer]", "attacks: [pgd, cw, bpda_eot, apgd_ce_bpda]"
    ).replace("adaptive_steps: 1", "adaptive_steps: 40")
    args = [
        "test",
        "--config",
        EVAL,
        "--ckpt_path",
        str(ckpt),
        *common(data, tmp_path),
        *fast_eval(out, slow),
        "--model.init_args.reversal.steps",
        "8",
    ]
    log = tmp_path / "run.log"
    proc = popen_lightning(*args, cwd=REPO, log=log)
    part = out / "per_example.rank0.json"
    while proc.poll() is None:  # until the first batch's first attack row is stored (or the run ends)
        if part.is_file() and any(k.startswith("main|") for k in json.loads(part.read_text())["rows"]):
            break
        time.sleep(0.2)
    assert proc.poll() is None, log.read_text()[-3000:]
    seen = {k.rsplit("|", 1)[0] for k in json.loads(part.read_text())["rows"]}  # rows finished when signalled
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait()
    text = log.read_text()
    stop = re.search(r"evaluation stopped \(SIGTERM\) before row (\d+)/(\d+) of batch (\d+)", text)
    assert rc != 0 and stop, text[-3000:]
    row, n_rows, batch = map(int, stop.groups())
    # within the row it was in (at most that one finished after the signal), not after all the batch's rows
    assert batch == 1 and row - 1 <= len(seen) + 1 and row < n_rows, (stop.group(0), sorted(seen))
    rows = json.loads(part.read_text())["rows"]
    assert "clean|with" in rows and any(k.startswith("main|") for k in rows)
    assert not (out / "robustness.json").exists()
    done = set(rows)
    proc = popen_lightning(*args, cwd=REPO, log=tmp_path / "resume.log")
    assert proc.wait() == 0, (tmp_path / "resume.log").read_text()[-3000:]
    final = json.loads((out / "per_example.json").read_text())["rows"]
    assert done < set(final)
    for k in done:  # what was saved before the stop is kept as it was (the rest of the batches added to it)
        before = dict(zip(rows[k]["idx"], rows[k]["correct"]))
        after = dict(zip(final[k]["idx"], final[k]["correct"]))
        assert {i: after[i] for i in before} == before, k


def test_uint8_batches_reach_the_evaluator_in_unit_range_without_prep():
    seen = []
    cb = RobustEvaluation(n_images=0)
    cb.evaluator = SimpleNamespace(evaluate_batch=lambda x, y, idx, i: seen.append(x))
    cb._surrogate_module = None
    module = nn.Linear(1, 1)  # no _prep: the callback converts the pixels itself
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3).repeat(2, 3, 1, 1)
    batch = (x, torch.tensor([0, 1]), torch.tensor([0, 1]))
    cb.on_test_batch_end(SimpleNamespace(is_global_zero=True), module, None, batch, 0)
    assert seen[0].dtype == torch.float32 and torch.allclose(seen[0], x.float() / 255)
