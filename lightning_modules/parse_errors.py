"""jsonargparse's nested "does not validate against any of the Union subtypes" messages, in one line.

A typo or a wrong type deep in a YAML file (``attack: {stepz: 3}``, ``steps: "ten"``) makes jsonargparse
print a tree of the union types it tried; :func:`one_line` finds the setting it failed on and says, in one
line, its full key, the file (or the command line) that set it, and for an unknown key the close matches.

Example:
    >>> msg = '''Parser key "model":
    ...   Errors:
    ...     - Problem with given class_path 'lightning_modules.ReversalModule':
    ...         Parser key "attack":
    ...           Errors:
    ...             - Problem with given class_path 'lightning_modules.AttackConfig':
    ...                 Option 'stepz' is not accepted'''
    >>> one_line(msg, [])
    "unknown setting model.init_args.attack.stepz (set on the command line or in a config file); did you mean 'steps'?"
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import re
from pathlib import Path
from typing import Any, Optional, Sequence

_KEY = re.compile(r'Parser key "([^"]+)"')
_CLASS = re.compile(r"Problem with given class_path '([\w.]+)'")
_UNKNOWN = re.compile(r"(?:Option|Key) '([^']+)' is not accepted|Unrecognized arguments?: (?:--)?([\w.]+)")
_TYPE = re.compile(r"Expected a <class '([\w.]+)'>\. Got value: (.*)")


def article(word: str) -> str:
    """``word`` with its indefinite article: ``article("int")`` -> ``"an int"``."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def _accepted(class_path: str) -> list[str]:
    """The settings ``class_path`` takes (dataclass fields or ``__init__`` parameters); [] when unknown."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        if dataclasses.is_dataclass(cls):
            return [f.name for f in dataclasses.fields(cls)]
        return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]
    except (ImportError, AttributeError, TypeError, ValueError):
        return []


def _lookup(tree: Any, keys: Sequence[str]) -> bool:
    for k in keys:
        if not isinstance(tree, dict) or k not in tree:
            return False
        tree = tree[k]
    return True


def where_set(keys: Sequence[str], argv: Sequence[str]) -> str:
    """The last ``--config`` file in ``argv`` holding ``keys`` (``init_args`` optional), else the command line."""
    import yaml

    flag = "--" + ".".join(keys)
    if any(a == flag or a.startswith(flag + "=") for a in argv):
        return "on the command line"
    files = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
    files += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    short = [k for k in keys if k != "init_args"]
    for f in reversed(files):
        try:
            tree = yaml.safe_load(Path(f).read_text())
        except (OSError, yaml.YAMLError):
            continue
        if _lookup(tree, keys) or _lookup(tree, short) or _lookup(tree, [keys[0], *short[1:]]):
            return f"in {f}"
    return "on the command line or in a config file" if not files else f"in one of {', '.join(files)}"


def one_line(message: str, argv: Sequence[str]) -> Optional[str]:
    """One line for jsonargparse's nested ``message`` (None when it is not one it can read)."""
    keys: list[str] = []
    last_class = None
    for line in str(message).splitlines():
        if k := _KEY.search(line):
            keys.append(k.group(1))
        elif c := _CLASS.search(line):
            last_class = c.group(1)
            if len(keys) == 1:  # model / data: their settings live under init_args
                keys.append("init_args")
        elif u := _UNKNOWN.search(line):
            name = (u.group(1) or u.group(2)).split(".")[-1]
            full = [*keys, name]
            close = difflib.get_close_matches(name, _accepted(last_class), n=3) if last_class else []
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            return f"unknown setting {'.'.join(full)} (set {where_set(full, argv)}){hint}"
        elif (t := _TYPE.search(line)) and keys:
            return (
                f"{'.'.join(keys)}: expected {t.group(1)}, got {t.group(2).strip()!r} "
                f"(set {where_set(keys, argv)}); give {article(t.group(1))}"
            )
    return None
