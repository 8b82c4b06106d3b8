"""The CLI obeys what it is given or refuses it saying why: settings given with a checkpoint, resuming
with another budget, untrained evaluations, overwritten outputs and configs, ranges, and errors that
end the output with one line naming the culprit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_modules.cli import run_cli
from lightning_modules.cli_checks import CheckpointFileError, CLIError
from tests.cli_runs import lightning, tiny_args
from tests.conftest import write_cifar10


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_cifar10(tmp_path / "data", n_train=24, n_test=8)


def fit(data: Path, root: Path, *extra: str):
    return run_cli(["fit", *tiny_args(data, root, "--trainer.max_steps", "2", *extra)])


def last_ckpt(root: Path) -> Path:
    return root / "checkpoints" / "tiny" / "last.ckpt"


def final_line(text: str) -> str:
    return [ln for ln in text.splitlines() if ln.strip()][-1]


# -- settings given with --ckpt_path ---------------------------------------------------------------
def test_evaluation_flags_win_over_the_checkpoint(data, tmp_path, capsys):
    root = tmp_path / "run"
    fit(
        data,
        root,
        "--model.init_args.reversal",
        "{steps: 2, n_views: 3}",
        "--model.init_args.inference.predict_attack_steps",
        "3",
    )
    ckpt = str(last_ckpt(root))
    cli = run_cli(
        [
            "predict",
            *tiny_args(
                data,
                root,
                "--ckpt_path",
                ckpt,
                "--model.init_args.inference.predict_attack",
                "none",
                "--model.init_args.reversal",
                "{steps: 1}",
            ),
        ]
    )
    assert cli.model.inference_cfg.predict_attack == "none"
    assert (cli.model.reversal_cfg.steps, cli.model.reversal_cfg.n_views) == (1, 3)  # other fields: the checkpoint's
    assert cli.model.inference_cfg.predict_attack_steps == 3
    err = capsys.readouterr().err
    assert (
        "the command line's settings win over the checkpoint's: inference.predict_attack none (checkpoint: pgd)" in err
    )
    p = torch.load(root / "preds" / "predictions.pt", weights_only=True)
    assert torch.equal(p["pred_before"], p["pred_clean"])  # not attacked
    cli = run_cli(["test", *tiny_args(data, root, "--ckpt_path", ckpt, "--model.init_args.reversal.steps", "4")])
    assert (cli.model.reversal_cfg.steps, cli.model.reversal_cfg.n_views) == (4, 3)


def test_architecture_and_resume_flags_that_contradict_the_checkpoint_fail_naming_both(data, tmp_path):
    root = tmp_path / "run"
    fit(data, root)
    ckpt = str(last_ckpt(root))
    with pytest.raises(
        CLIError,
        match=r"backbone_kwargs \{'width': 8\} contradicts checkpoint .*last.ckpt, which was "
        r"trained with backbone_kwargs \{'width': 4\}",
    ):
        run_cli(
            ["predict", *tiny_args(data, root, "--ckpt_path", ckpt, "--model.init_args.backbone_kwargs", "{width: 8}")]
        )
    with pytest.raises(
        CLIError, match=r"optim differs from checkpoint .*: optim.lr 0.5 \(checkpoint: 0.05\). A resumed fit continues"
    ):
        run_cli(["fit", *tiny_args(data, root, "--ckpt_path", ckpt, "--model.init_args.optim.lr", "0.5")])
    with pytest.raises(CLIError, match="the weights come from the checkpoint"):
        run_cli(["test", *tiny_args(data, root, "--ckpt_path", ckpt, "--model.init_args.backbone_checkpoint", ckpt)])


# -- resuming with another budget ------------------------------------------------------------------
def test_resume_with_a_larger_budget_rebuilds_the_schedule(data, tmp_path, capsys):
    root = tmp_path / "run"
    fit(data, root, "--model.init_args.optim.schedule", "onecycle")
    cli = run_cli(
        [
            "fit",
            *tiny_args(
                data,
                root,
                "--model.init_args.optim.schedule",
                "onecycle",
                "--trainer.max_steps",
                "5",
                "--ckpt_path",
                "last",
            ),
        ]
    )
    assert cli.trainer.global_step == 5
    assert (
        "resuming at step 2 with a budget of 5 steps (the checkpoint's onecycle schedule was for 2): the "
        "schedule is rebuilt for 5 steps" in capsys.readouterr().err
    )
    assert torch.load(last_ckpt(root), weights_only=True)["schedule_total_steps"] == 5


def test_resumed_run_draws_what_the_uninterrupted_run_draws(data, tmp_path):
    common = ("--model.init_args.attack.mode", "fgsm_rs", "--trainer.limit_val_batches", "0")  # random starts + views
    run_cli(["fit", *tiny_args(data, tmp_path / "a", "--trainer.max_steps", "4", *common)])
    run_cli(["fit", *tiny_args(data, tmp_path / "b", "--trainer.max_steps", "2", *common)])
    run_cli(["fit", *tiny_args(data, tmp_path / "b", "--trainer.max_steps", "4", "--ckpt_path", "last", *common)])
    a, b = (torch.load(last_ckpt(tmp_path / r), weights_only=True) for r in ("a", "b"))
    assert a["global_step"] == b["global_step"] == 4
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k


# -- --ckpt_path last / auto / untrained -----------------------------------------------------------
def test_ckpt_path_last_without_a_checkpoint_fails_and_auto_starts_new(data, tmp_path, capsys):
    root = tmp_path / "run"
    with pytest.raises(CLIError, match=r"--ckpt_path last: no last\.ckpt in .*checkpoints/tiny.*--ckpt_path auto"):
        run_cli(["fit", *tiny_args(data, root, "--ckpt_path", "last")])
    cli = run_cli(["fit", *tiny_args(data, root, "--trainer.max_steps", "1", "--ckpt_path", "auto")])
    assert cli.trainer.global_step == 1 and "--ckpt_path auto: no last.ckpt in" in capsys.readouterr().err
    cli = run_cli(["fit", *tiny_args(data, root, "--trainer.max_steps", "2", "--ckpt_path", "auto")])
    assert cli.trainer.global_step == 2 and cli.trainer.ckpt_path == str(last_ckpt(root))


def test_predict_refuses_untrained_models_and_overwriting(data, tmp_path):
    root = tmp_path / "run"
    with pytest.raises(
        CLIError, match=r"lightning predict without --ckpt_path would run a model that was never trained"
    ):
        run_cli(["predict", *tiny_args(data, root)])
    with pytest.raises(CLIError, match="never trained"):
        run_cli(["test", *tiny_args(data, root)])
    fit(data, root)
    ckpt = str(last_ckpt(root))
    run_cli(["predict", *tiny_args(data, root, "--ckpt_path", ckpt)])
    out = root / "preds" / "predictions.pt"
    before = out.read_bytes()
    assert "predict" in (root / "preds" / "config.yaml").read_text()  # the run's config beside its outputs
    with pytest.raises(FileExistsError, match=rf"{out} exists .*--overwrite true"):
        run_cli(
            [
                "predict",
                *tiny_args(data, root, "--ckpt_path", ckpt, "--model.init_args.inference.predict_attack", "none"),
            ]
        )
    assert out.read_bytes() == before
    run_cli(
        [
            "predict",
            *tiny_args(
                data,
                root,
                "--ckpt_path",
                ckpt,
                "--model.init_args.inference.predict_attack",
                "none",
                "--overwrite",
                "true",
            ),
        ]
    )
    assert out.read_bytes() != before
    assert "predict_attack: none" in (root / "preds" / "config.yaml").read_text()
    run_cli(["predict", *tiny_args(data, tmp_path / "untrained"), "--allow_untrained", "true"])
    assert (tmp_path / "untrained" / "preds" / "predictions.pt").is_file()


def test_each_run_keeps_its_own_config(data, tmp_path):
    root = tmp_path / "run"
    fit(data, root, "--model.init_args.attack.eps", "0.02")
    beside = last_ckpt(root).parent / "config.yaml"
    fit_config = beside.read_text()
    assert "eps: 0.02" in fit_config
    cli = run_cli(
        [
            "test",
            *tiny_args(
                data, root, "--ckpt_path", str(last_ckpt(root)), "--model.init_args.inference.predict_attack_steps", "1"
            ),
        ]
    )
    assert beside.read_text() == fit_config  # an evaluation does not replace the training run's config
    run_dir = Path(cli.trainer.log_dir)
    assert "predict_attack_steps: 1" in (run_dir / "config.yaml").read_text()
    configs = sorted(root.rglob("version_*/config.yaml"))
    assert len(configs) == 2 and configs[0].read_text() != configs[1].read_text()


# -- ranges ----------------------------------------------------------------------------------------
def test_counts_and_sizes_are_validated(data, tmp_path):
    with pytest.raises(ValueError, match="steps must be >= 1, got -3"):
        fit(data, tmp_path / "r", "--model.init_args.attack.mode", "pgd", "--model.init_args.attack.steps", "-3")
    with pytest.raises(ValueError, match=r"eval_batch_size must be >= 1 or null \(= batch_size\), got 0"):
        fit(data, tmp_path / "r", "--data.init_args.eval_batch_size", "0")


# -- errors end the output with one line -------------------------------------------------------------
@pytest.mark.parametrize(
    "flags,message",
    [
        (
            ("--model.init_args.attack.eps", "8"),
            "error: ValueError: eps=8.0 is larger than the whole [0, 1] pixel range",
        ),
        (
            ("--model.init_args.backbone", "preact_resnet"),
            "error: ValueError: unknown backbone 'preact_resnet'; choose "
            "one of ['preact_resnet18', 'wrn28_10', 'wrn34_10', 'resnet50', 'small_cnn', 'wide_resnet'] (did you mean "
            "['preact_resnet18'",
        ),
        (("--data.init_args.batch_size", "0"), "error: ValueError: batch_size must be >= 1, got 0"),
    ],
)
def test_console_errors_end_with_one_line_naming_the_culprit(data, tmp_path, flags, message):
    r = lightning("fit", *tiny_args(data, tmp_path / "run", "--trainer.max_steps", "1", *flags), cwd=tmp_path)
    assert r.returncode == 1
    assert final_line(r.stderr).startswith(message), r.stderr[-1500:]
    assert "Given value" not in r.stderr + r.stdout  # jsonargparse's dump of the parsed config


def test_console_checkpoint_errors_name_the_file(data, tmp_path):
    root = tmp_path / "run"
    fit(data, root)
    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes(last_ckpt(root).read_bytes()[:4000])
    r = lightning("predict", *tiny_args(data, root, "--ckpt_path", str(bad)), cwd=tmp_path)
    assert r.returncode == 1 and final_line(r.stderr).startswith(
        f"error: CheckpointFileError: checkpoint {bad} cannot be read"
    ), r.stderr[-1500:]
    with pytest.raises(CheckpointFileError, match=str(bad)):
        run_cli(["test", *tiny_args(data, root, "--ckpt_path", str(bad))])
    r = lightning(
        "test",
        *tiny_args(data, root, "--ckpt_path", str(last_ckpt(root)), "--model.init_args.backbone", "preact_resnet18"),
        cwd=tmp_path,
    )
    assert r.returncode == 1 and final_line(r.stderr).startswith(
        "error: CLIError: --model.init_args.backbone preact_resnet18 contradicts checkpoint"
    ), r.stderr[-1500:]


def test_unwritable_checkpoint_folder_fails_before_training(data, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    cb = (
        "    - class_path: callbacks.AtomicCheckpoint\n"
        f"      init_args: {{save_last: true, dirpath: {blocker / 'ckpts'}}}\n"
    )
    r = lightning("fit", *tiny_args(data, tmp_path / "run", "--trainer.max_steps", "2", callbacks=cb), cwd=tmp_path)
    assert r.returncode == 1
    assert final_line(r.stderr).startswith(f"error: OSError: checkpoint folder {blocker / 'ckpts'} is not writable")
    assert "train/loss" not in r.stdout + r.stderr
