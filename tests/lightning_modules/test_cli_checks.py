"""Reading the command line's --model flags, resolving --ckpt_path, and the closing error line."""

import io
import os
import time

import pytest

from lightning_modules.cli_checks import CLIError, given_model_flags, report_error, resolve_ckpt_path


def test_given_model_flags_know_whole_values_and_fields():
    g = given_model_flags(
        [
            "predict",
            "--config",
            "x.yaml",
            "--model.init_args.inference.predict_attack",
            "none",
            "--model.init_args.reversal",
            "{steps: 5}",
            "--model.reversal.n_views=3",
            "--model.init_args.backbone_kwargs={width: 16}",
            "--model.class_path",
            "a.B",
            "--data.init_args.batch_size",
            "4",
        ]
    )
    assert g.names == {"inference": {"predict_attack"}, "reversal": {"steps", "n_views"}, "backbone_kwargs": {"width"}}
    assert g.class_path == "a.B" and g.whole is None
    assert (
        given_model_flags(["--model", "lightning_modules.ReversalModule"]).class_path
        == "lightning_modules.ReversalModule"
    )
    assert given_model_flags(["--model", "{class_path: a.B}"]).whole == "{class_path: a.B}"


def test_given_model_flags_count_a_config_files_model_settings(tmp_path):
    cfg = tmp_path / "eval.yaml"
    args = "    reversal: {views: fast}\n    backbone_checkpoint: w.pt\n    head_dim: 8\n"
    cfg.write_text("model:\n  init_args:\n" + args)
    g = given_model_flags(["test", "--config", str(cfg), "--model.init_args.reversal.steps", "3"])
    assert g.names == {"reversal": {"views", "steps"}}  # the rest of a config file: the checkpoint's values
    assert given_model_flags([f"--config={tmp_path / 'missing.yaml'}"]).names == {}  # the parser reports it


def test_resolve_ckpt_path(tmp_path):
    assert resolve_ckpt_path(None, [tmp_path]) is None
    with pytest.raises(CLIError, match="--ckpt_path last: no last"):
        resolve_ckpt_path("last", [tmp_path])
    assert resolve_ckpt_path("auto", [tmp_path]) is None
    old, new = tmp_path / "last.ckpt", tmp_path / "last-v1.ckpt"
    old.write_bytes(b"a"), new.write_bytes(b"b")
    os.utime(old, (time.time() - 100, time.time() - 100))
    # last-v1.ckpt is another run's, written beside this one's: never resumed, however new
    assert resolve_ckpt_path("last", [tmp_path]) == resolve_ckpt_path("auto", [tmp_path]) == str(old)
    with pytest.raises(CLIError, match="--ckpt_path nope.ckpt: no such file"):
        resolve_ckpt_path("nope.ckpt", [tmp_path])


def test_report_error_ends_with_the_real_error():
    try:
        try:
            raise ValueError("steps must be >= 1,\n got -3")
        except ValueError as inner:
            raise RuntimeError("wrapper") from inner
    except RuntimeError as e:
        out = io.StringIO()
        report_error(e, out)
    assert out.getvalue().rstrip().splitlines()[-1] == "error: RuntimeError: wrapper"  # not from jsonargparse: kept
