import subprocess
import sys

import pytest

from lightning_modules.parse_errors import article, one_line

NESTED = """Parser key "model":
  Errors:
    - Problem with given class_path 'lightning_modules.ReversalModule':
        Parser key "attack":
          Errors:
            - Problem with given class_path 'lightning_modules.AttackConfig':
                {inner}"""


def test_unknown_nested_key_names_the_key_and_close_matches():
    msg = one_line(NESTED.format(inner="Option 'stepz' is not accepted"), [])
    assert msg.startswith("unknown setting model.init_args.attack.stepz")
    assert "did you mean 'steps'" in msg


def test_wrong_type_names_the_key_and_the_type():
    inner = "Parser key \"steps\":\n                  Expected a <class 'int'>. Got value: ten"
    msg = one_line(NESTED.format(inner=inner), [])
    assert msg.startswith("model.init_args.attack.steps: expected int, got 'ten'")
    assert msg.endswith("give an int")
    assert article("float") == "a float"


@pytest.mark.parametrize(
    "yaml_text,expect",
    [
        ("model:\n  init_args:\n    attack:\n      stepz: 3\n", r"stepz.*typo\.yaml.*did you mean 'steps'"),
        (
            "model:\n  init_args:\n    attack:\n      steps: ten\n",
            r"attack\.steps: expected int, got 'ten'.*typo\.yaml",
        ),
    ],
)
def test_cli_prints_one_error_line_naming_the_file(tmp_path, yaml_text, expect):
    import re

    cfg = tmp_path / "typo.yaml"
    cfg.write_text(yaml_text)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "lightning_modules.cli",
            "fit",
            "--config",
            "experiments/cifar10/fast_at.yaml",
            "--config",
            str(cfg),
            "--trainer.fast_dev_run",
            "true",
        ],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "WANDB_MODE": "disabled"},
    )
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and re.search(expect, last), last
