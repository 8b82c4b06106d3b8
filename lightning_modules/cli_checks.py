"""Checks behind the ``lightning`` command line: what ``--ckpt_path`` means, which settings win over a
checkpoint's, refusing untrained evaluations, and one closing error line.

With ``--ckpt_path`` the model is rebuilt from the checkpoint's hyperparameters. Settings given on the command
line (``--model.init_args.NAME VALUE``, ``--model.init_args.reversal.steps 5``) then win over the checkpoint's
for everything that does not change the weights' shapes (attack, reversal, views, training attack);
architecture settings that contradict the checkpoint fail naming both values, and so do, on ``fit``, the
optimizer settings the resumed optimizer state fixes. Config files and defaults do not count as given: the
checkpoint's values replace them (so the experiment file that trained a model, with its command-line
overrides, evaluates it). The one exception is a config file's ``reversal`` (:data:`CONFIG_GIVEN`): the
deployed defense's settings, which an evaluation profile chooses (``eval_mao2021.yaml``: ``recipe: mao2021``).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import sys
import traceback
import zipfile
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import yaml

from .settings import RECIPES
from .util import say

# settings that change the weights' shapes: given values must equal the checkpoint's
ARCH_KEYS = ("backbone", "backbone_kwargs", "num_classes", "normalization", "robustbench_model", "robustbench_dataset")
ARCH_KEYS += ("robustbench_threat_model", "head_hidden", "head_dim")
# on ``fit --ckpt_path`` the optimizer (and its schedule) continue from the checkpoint's state
RESUME_FIXED_KEYS = ("optim",)
# the weights come from --ckpt_path, so a file given for them would be loaded and then replaced
WEIGHT_FILE_KEYS = ("backbone_checkpoint",)
CONFIG_GIVEN = ("reversal",)  # a config file's settings that win over a checkpoint's (module doc)


class CLIError(ValueError):
    """A command-line setting that cannot be obeyed; the message says why and what to do."""


class CheckpointFileError(RuntimeError):
    """A checkpoint file that cannot be read (truncated, not a checkpoint); the message names it."""


def resolve_ckpt_path(value: Optional[str], folders: Sequence[Path]) -> Optional[str]:
    """``last`` -> the newest ``last.ckpt`` in ``folders`` (an error when none), ``auto`` -> the same or
    ``None`` (a new run, said in one line: for job scripts that are resubmitted), a path -> itself (an
    error when it does not exist)."""
    if value is None or value in ("best", "hpc", "registry") or str(value).startswith("registry:"):
        return value
    if value in ("last", "auto"):
        # last.ckpt only: last-v1.ckpt and the like are another run's, written beside it
        found = [Path(d) / "last.ckpt" for d in folders if (Path(d) / "last.ckpt").is_file()]
        if found:
            return str(max(found, key=lambda p: p.stat().st_mtime))
        where = ", ".join(str(d) for d in folders) or "(no checkpoint callback configured)"
        others = sorted(str(p) for d in folders if Path(d).is_dir() for p in Path(d).glob("last-*.ckpt"))
        if others and value == "last":
            raise CLIError(
                f"--ckpt_path last: no last.ckpt in {where}, only {', '.join(others)} (another run's, written "
                "into the same folder): give the file you mean with --ckpt_path FILE"
            )
        if value == "auto":
            say(f"--ckpt_path auto: no last.ckpt in {where}; starting a new run")
            return None
        raise CLIError(
            f"--ckpt_path last: no last.ckpt in {where} (no earlier run of this experiment saved one "
            "there). Drop --ckpt_path to start a new run, give the checkpoint file, or use "
            "--ckpt_path auto to resume when one exists and start a new run otherwise"
        )
    if not Path(value).exists():
        raise CLIError(f"--ckpt_path {value}: no such file")
    return value


def read_checkpoint(path: str) -> dict:
    """The checkpoint at ``path`` loaded with ``weights_only=True`` on the CPU; a file that is not a
    readable checkpoint fails naming it (an unsafe one raises ``pickle.UnpicklingError`` unchanged)."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e) or "weights_only" in str(e):
            raise
        err: BaseException = e
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        err = e
    first = (str(err).splitlines() or [""])[0]
    raise CheckpointFileError(
        f"checkpoint {path} cannot be read ({type(err).__name__}: {first}): it is truncated or not a checkpoint "
        "(an interrupted copy?). Give another file, e.g. an earlier epoch's checkpoint in the same folder"
    ) from None


def not_lightning_checkpoint(path: str, ckpt: object) -> None:
    """Refuse, naming ``path``, a file that loads but is not a Lightning checkpoint (a bare state dict)."""
    if isinstance(ckpt, dict) and "state_dict" in ckpt and "pytorch-lightning_version" in ckpt:
        return
    what = f"a bare state dict of {len(ckpt)} entries" if isinstance(ckpt, dict) else f"a {type(ckpt).__name__}"
    raise CheckpointFileError(
        f"--ckpt_path {path}: {what}, not a Lightning checkpoint (no 'state_dict' / 'pytorch-lightning_version'). "
        f"Give a checkpoint a `lightning fit` wrote, or use these weights as the backbone: "
        f"--model.init_args.backbone_checkpoint {path} (without --ckpt_path; add --allow_untrained true outside fit)"
    )


def untrained_error(subcommand: str, folders: Sequence[Path]) -> CLIError:
    found = [str(p) for d in folders if Path(d).is_dir() for p in sorted(Path(d).glob("last*.ckpt"))]
    hint = f" (this experiment's: {found[0]})" if found else ""
    return CLIError(
        f"lightning {subcommand} without --ckpt_path would run a model that was never trained (random "
        f"weights). Pass --ckpt_path CKPT{hint}, or --allow_untrained true to run it anyway"
    )


@dataclasses.dataclass
class GivenModelFlags:
    """``--model.*`` flags of a command line: ``names`` maps an ``init_args`` name to ``None`` (the
    whole value given) or the set of its fields given (``{steps: 5}``, ``reversal.steps 5``)."""

    names: dict[str, Optional[set]] = dataclasses.field(default_factory=dict)
    class_path: Optional[str] = None
    whole: Optional[str] = None  # ``--model VALUE`` with a dict / file (not just a class name)


def _add(out: GivenModelFlags, name: str, fields: Optional[set]) -> None:
    before = out.names.get(name, set())
    out.names[name] = None if fields is None or before is None else before | fields


def _config_model_args(path: Optional[str]) -> dict:
    """``model.init_args`` of a ``--config`` file (``{}`` when it has none or cannot be read: the parser
    reports a bad file itself)."""
    try:
        model = (yaml.safe_load(Path(path).read_text()) or {}).get("model")
    except (OSError, TypeError, AttributeError, yaml.YAMLError):
        return {}
    args = model.get("init_args") if isinstance(model, dict) else None
    return args if isinstance(args, dict) else {}


def given_model_flags(argv: Sequence[str]) -> GivenModelFlags:
    """The model settings a command line gives: its ``--model.*`` flags, and the :data:`CONFIG_GIVEN`
    settings of its ``--config`` files' ``model.init_args``."""
    out, argv = GivenModelFlags(), list(argv)
    for i, tok in enumerate(argv):
        key, eq, val = tok[2:].partition("=")
        if tok.startswith("--") and key == "config":
            for name, value in _config_model_args(val if eq else (argv[i + 1] if i + 1 < len(argv) else None)).items():
                if name in CONFIG_GIVEN:
                    _add(out, name, set(value) if isinstance(value, dict) else None)
            continue
        head, *parts = key.split(".")
        if not tok.startswith("--") or head != "model":
            continue
        value = val if eq else (argv[i + 1] if i + 1 < len(argv) else None)
        if parts[:1] in (["init_args"], ["dict_kwargs"]):
            parts = parts[1:]
        if key == "model":
            if value and all(part.isidentifier() for part in value.split(".")):
                out.class_path = value
            else:
                out.whole = value
        elif parts and parts[0] == "class_path":
            out.class_path = value
        elif parts and parts[0] != "help":
            name, sub = parts[0], parts[1:]
            try:
                parsed = yaml.safe_load(value) if isinstance(value, str) else None
            except yaml.YAMLError:
                parsed = None
            _add(out, name, {sub[0]} if sub else (set(parsed) if isinstance(parsed, dict) else None))
    return out


def plain(v: Any) -> Any:
    """Namespaces, dataclasses and tuples as dicts and lists, for comparing settings."""
    if hasattr(v, "as_dict"):
        v = v.as_dict()
    elif dataclasses.is_dataclass(v) and not isinstance(v, type):
        v = dataclasses.asdict(v)
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v


def differences(name: str, mine: Any, theirs: Any) -> str:
    """``name value (checkpoint: value)``; for a group of settings, one such item per differing field.

    >>> differences("optim", {"lr": 0.5, "warmup": 0.2}, {"lr": 0.05, "warmup": 0.2})
    'optim.lr 0.5 (checkpoint: 0.05)'
    """
    mine, theirs = plain(mine), plain(theirs)
    if isinstance(mine, dict) and isinstance(theirs, dict):
        keys = [k for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)]
        return "; ".join(f"{name}.{k} {mine.get(k)} (checkpoint: {theirs.get(k)})" for k in keys)
    return f"{name} {mine} (checkpoint: {theirs})"


def reconcile(
    subcommand: str, ckpt_path: str, hparams: dict, given: GivenModelFlags, pre: Any, merged: Any
) -> dict[str, Any]:
    """The ``init_args`` values to put back over the checkpoint's: each setting given on the command
    line (``pre``: its parsed value before the checkpoint was merged; ``merged``: the value after).
    Raises :class:`CLIError` for settings the checkpoint fixes."""
    if given.whole is not None:
        raise CLIError(
            f"--model {given.whole} with --ckpt_path {ckpt_path}: the model is rebuilt from the checkpoint's "
            "settings; give only the settings to change, one by one (--model.init_args.NAME VALUE)"
        )
    theirs_class = hparams.get("_class_path")
    if given.class_path and theirs_class and given.class_path.rsplit(".", 1)[-1] != theirs_class.rsplit(".", 1)[-1]:
        raise CLIError(
            f"--model.class_path {given.class_path} contradicts checkpoint {ckpt_path}, which holds a "
            f"{theirs_class}: drop the flag (the class comes from the checkpoint)"
        )
    out, notes = {}, []
    for name, fields in given.names.items():
        if pre is None or name not in pre:
            continue
        mine, theirs = pre[name], merged.get(name) if merged is not None else None
        if fields is not None and (hasattr(theirs, "clone") or isinstance(theirs, dict)):
            value = theirs.clone() if hasattr(theirs, "clone") else dict(theirs)
            for f in fields:
                value[f] = mine[f]
            if name == "reversal" and "recipe" in fields and value["recipe"] != theirs["recipe"]:
                for f in set(RECIPES[value["recipe"]]) - fields:  # a new recipe: its values, not the old one's
                    value[f] = None
        else:
            value = mine
        if name in WEIGHT_FILE_KEYS and value is not None:
            raise CLIError(
                f"--model.init_args.{name} {value} with --ckpt_path {ckpt_path}: the weights come from "
                "the checkpoint; drop one of the two"
            )
        if name not in hparams or plain(value) == plain(hparams[name]):
            out[name] = value
            continue
        if name in ARCH_KEYS:
            raise CLIError(
                f"--model.init_args.{name} {plain(value)} contradicts checkpoint {ckpt_path}, which "
                f"was trained with {name} {plain(hparams[name])}: the architecture comes from the "
                "checkpoint; drop the flag (or train a new model with it)"
            )
        diff = differences(name, value, hparams[name])
        if subcommand == "fit" and name in RESUME_FIXED_KEYS:
            raise CLIError(
                f"--model.init_args.{name} differs from checkpoint {ckpt_path}: {diff}. A resumed fit continues "
                "the checkpoint's optimizer and schedule; drop the flag, or start a new run without --ckpt_path"
            )
        out[name] = value
        notes.append(diff)
    if notes:
        say(f"{ckpt_path}: the command line's settings win over the checkpoint's: {'; '.join(notes)}")
    return out


def _raised_in(e: BaseException, package: str) -> bool:
    tb, last = e.__traceback__, None
    while tb is not None:
        last, tb = tb, tb.tb_next
    return last is not None and f"{os.sep}{package}{os.sep}" in last.tb_frame.f_code.co_filename


def root_cause(e: BaseException) -> BaseException:
    """The error behind jsonargparse's wrappers (which repeat the whole parsed config)."""
    while e.__cause__ is not None and _raised_in(e, "jsonargparse"):
        e = e.__cause__
    return e


def report_error(e: BaseException, stream=None) -> None:
    """Print the traceback of the real error, then one line ``error: TYPE: MESSAGE`` (last in the output)."""
    stream, root = stream or sys.stderr, root_cause(e)
    traceback.print_exception(type(root), root, root.__traceback__, file=stream)
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:  # its exit banner would come after
        try:
            wandb.finish(exit_code=1)
        except Exception:  # noqa: BLE001  (the run's error matters, not the logger's)
            pass
    message = " ".join(str(root).split()) or repr(root)
    print(f"error: {type(root).__name__}: {message}", file=stream, flush=True)
