"""The robustness evaluation: every attack, with and without the reversal, per example, resumable.

:class:`RobustEvaluator` takes the defended model as plain callables — ``model_fn`` (images in
``[0, 1]`` -> logits), ``reverse_fn`` (the reversal, or None for an undefended model) and
``ssl_fn`` (per-image contrastive loss, for the defense-aware attack) — and, batch by batch,
records for every row whether each example is classified correctly:

- **clean**, without and with the reversal;
- **non-adaptive attacks** crafted on the classifier alone (PGD, CW-margin PGD, APGD-CE and
  standard AutoAttack from pyautoattack), classified without the reversal and after reversing
  them ("with");
- **adaptive attacks** crafted against the reversal (:mod:`lightning_modules.adaptive`:
  defense-aware, BPDA + EOT, full gradient + EOT, transfer), each its own row;
- for each threat model the **worst case per example** over clean and all rows (an example counts
  as robust only if every attack failed on it, as AutoAttack counts);
- sweeps on the first examples: accuracy vs eps, vs attack steps, vs reversal steps;
- the **sanity checks** (:meth:`RobustEvaluator.sanity_checks`).

Results live in a :class:`ResultStore` keyed by row and data-set index (``idx``), so an
interrupted run resumes batch by batch (rows already computed for a batch are skipped), ranks
of a distributed run merge by ``idx``, and a row's key spells out its settings (a changed
setting is a new row, never a stale one). Each (row, batch) is seeded from the row and the
batch's indices, so a resumed or reordered run draws the same random numbers.

Example:
    >>> import torch
    >>> from lightning_modules.adaptive import ReversalFns
    >>> from lightning_modules.backbones import build_backbone
    >>> from lightning_modules.evaluation import EvalConfig, RobustEvaluator
    >>> from lightning_modules.heads import ContrastiveHead
    >>> from lightning_modules.reversal import ReversalConfig
    >>> net, head = build_backbone("small_cnn", width=8).eval(), ContrastiveHead(32, 64, 16).eval()
    >>> fns = ReversalFns(net, head, ReversalConfig(steps=2))
    >>> cfg = EvalConfig(threat_models={"Linf": 8 / 255}, attacks=["pgd"], adaptive=["bpda_eot"], steps=2,
    ...                  eot_samples=1, eps_sweep=[], attack_steps_sweep=[], reversal_steps_sweep=[])
    >>> ev = RobustEvaluator.for_reversal(fns, cfg)
    >>> ev.evaluate_batch(torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,)), torch.arange(4))
    >>> summary = ev.summary()
    >>> [r["attack"] for r in summary["rows"]]
    ['pgd', 'bpda_eot']
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import zlib
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import torch

from .adaptive import ReversalFns, bpda_eot, defense_aware, full_gradient, transfer
from .attacks import ThreatModel, check_eps, logits_of, pgd
from .autoattack import apgd, autoattack

Fn = Callable[[torch.Tensor], torch.Tensor]

NON_ADAPTIVE = ("pgd", "cw", "apgd-ce", "autoattack")
ADAPTIVE = ("defense_aware", "bpda_eot", "full_gradient", "transfer")
WHITE_BOX_ADAPTIVE = ("defense_aware", "bpda_eot", "full_gradient")
SWEEP_ATTACKS = ("pgd", "cw", "defense_aware", "bpda_eot", "full_gradient")


def parse_eps(value: Union[float, int, str]) -> float:
    """``0.0314``, ``"8/255"`` or ``"0.5"`` -> float."""
    if isinstance(value, str):
        v = value.strip()
        if "/" in v:
            num, den = v.split("/", 1)
            return float(num) / float(den)
        return float(v)
    return float(value)


def eps_label(eps: float, norm: str = "Linf") -> str:
    """``8/255`` for L-inf budgets that are (close to) multiples of 1/255, else ``0.5``."""
    k = eps * 255
    if ThreatModel(norm) is ThreatModel.Linf and abs(k - round(k)) < 1e-3 and eps > 0:
        return f"{int(round(k))}/255"
    if eps == 0:
        return "0"
    frac = Fraction(eps).limit_denominator(1000)
    return f"{eps:.4g}" if abs(float(frac) - eps) > 1e-9 or frac.denominator == 1 else f"{eps:g}"


@dataclass
class EvalConfig:
    """What the evaluation runs. Budgets in ``[0, 1]`` pixel units (or strings like ``"8/255"``).

    Attributes:
        threat_models: norm -> eps of the main table (``Linf`` 8/255 and ``L2`` 0.5).
        attacks: non-adaptive attacks: ``pgd``, ``cw`` (CW-margin PGD), ``apgd-ce``, ``autoattack``.
        adaptive: adaptive attacks: ``defense_aware``, ``bpda_eot``, ``full_gradient``, ``transfer``.
        steps, restarts: PGD and CW iterations and random restarts (also the adaptive attacks' restarts).
        step_size: PGD step as a fraction of eps (0.25: 2/255 at 8/255).
        apgd_steps: APGD-CE iterations.
        adaptive_steps: iterations of the defense-aware, BPDA and full-gradient attacks (default ``steps``).
        eot_samples: reversals averaged per gradient (EOT) in BPDA and full gradient.
        defense_aware_lambda: ``lambda_s`` of the defense-aware loss ``CE - lambda_s * L_ssl``.
        full_gradient_steps: reversal steps the full-gradient attacker unrolls (default: all).
        full_gradient_smooth: ``tau`` of its smooth sign (:func:`~lightning_modules.adaptive.smooth_sign`):
            a heuristic surrogate for the derivative of the reversal's signed steps; 0.3 broke the
            reversal on the toy model of the tests where 0.1, 0.2, 0.5 and 1 did not, so try others
            when this row looks weak.
        full_gradient_checkpoint: recompute each unrolled step on the backward pass (saves memory).
        full_gradient_batch: attack in chunks of this many images (saves memory; default: whole batch).
        transfer_steps: PGD steps on the surrogate for the transfer attack (default ``2 * steps``).
        eps_sweep: budgets of the accuracy-vs-eps sweep (norm ``eps_sweep_norm``); its largest
            should be large (64/255) for the "accuracy goes to 0" sanity check.
        eps_sweep_attacks: attacks of that sweep (from ``pgd``, ``cw``, ``defense_aware``,
            ``bpda_eot``, ``full_gradient``).
        eps_sweep_n: the sweep runs on examples with ``idx < eps_sweep_n``.
        attack_steps_sweep: attack step counts for the "more steps never help" check.
        steps_sweep_attacks: attacks of that sweep (threat model: the first of ``threat_models``).
        reversal_steps_sweep: reversal step counts of the accuracy-vs-reversal-steps plot.
        reversal_sweep_attacks: rows of that sweep besides clean: ``pgd`` (non-adaptive, crafted once),
            ``bpda_eot`` (re-crafted against each reversal).
        steps_sweep_n: both steps sweeps run on examples with ``idx < steps_sweep_n``.
        sanity_checks: run and report the sanity checks.
        standard_model: the classifier is an undefended standard model: check it gets ~0% under
            PGD-20 at 8/255.
        zero_tolerance: "~0" means at most this accuracy.
        noise_tolerance: allowed excess in paired comparisons; default: two binomial standard
            errors plus one example (``2 sqrt(p(1-p)/n) + 1/n``).
        seed: seeds every (row, batch).
    """

    threat_models: dict[str, Union[float, str]] = field(default_factory=lambda: {"Linf": "8/255", "L2": 0.5})
    attacks: list[str] = field(default_factory=lambda: list(NON_ADAPTIVE))
    adaptive: list[str] = field(default_factory=lambda: list(ADAPTIVE))
    steps: int = 20
    restarts: int = 1
    step_size: float = 0.25
    apgd_steps: int = 100
    adaptive_steps: Optional[int] = None
    eot_samples: int = 4
    defense_aware_lambda: float = 1.0
    full_gradient_steps: Optional[int] = None
    full_gradient_smooth: float = 0.3
    full_gradient_checkpoint: bool = True
    full_gradient_batch: Optional[int] = None
    transfer_steps: Optional[int] = None
    eps_sweep: list[Union[float, str]] = field(
        default_factory=lambda: ["0/255", "2/255", "4/255", "8/255", "16/255", "32/255", "64/255"])
    eps_sweep_norm: str = "Linf"
    eps_sweep_attacks: list[str] = field(default_factory=lambda: ["pgd", "bpda_eot"])
    eps_sweep_n: int = 200
    attack_steps_sweep: list[int] = field(default_factory=lambda: [5, 10, 20, 50])
    steps_sweep_attacks: list[str] = field(default_factory=lambda: ["pgd", "bpda_eot"])
    reversal_steps_sweep: list[int] = field(default_factory=lambda: [0, 5, 10, 20, 40])
    reversal_sweep_attacks: list[str] = field(default_factory=lambda: ["pgd"])
    steps_sweep_n: int = 200
    sanity_checks: bool = True
    standard_model: bool = False
    zero_tolerance: float = 0.05
    noise_tolerance: Optional[float] = None
    seed: int = 0

    def __post_init__(self) -> None:
        self.threat_models = {ThreatModel(k).value: parse_eps(v) for k, v in dict(self.threat_models).items()}
        for norm, eps in self.threat_models.items():
            check_eps(eps, norm)
        self.eps_sweep_norm = ThreatModel(self.eps_sweep_norm).value
        self.eps_sweep = sorted({parse_eps(e) for e in self.eps_sweep})
        for e in self.eps_sweep:
            check_eps(e, self.eps_sweep_norm)
        self.attacks, self.adaptive = list(self.attacks), list(self.adaptive)
        _check_names("attacks", self.attacks, NON_ADAPTIVE)
        _check_names("adaptive", self.adaptive, ADAPTIVE)
        _check_names("eps_sweep_attacks", self.eps_sweep_attacks, SWEEP_ATTACKS)
        _check_names("steps_sweep_attacks", self.steps_sweep_attacks, SWEEP_ATTACKS)
        _check_names("reversal_sweep_attacks", self.reversal_sweep_attacks, ("pgd", "bpda_eot"))
        for name in ("steps", "restarts", "apgd_steps", "eot_samples", "eps_sweep_n", "steps_sweep_n"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if any(s < 1 for s in self.attack_steps_sweep) or any(s < 0 for s in self.reversal_steps_sweep):
            raise ValueError("attack_steps_sweep needs steps >= 1 and reversal_steps_sweep steps >= 0")
        self.attack_steps_sweep = sorted(set(int(s) for s in self.attack_steps_sweep))
        self.reversal_steps_sweep = sorted(set(int(s) for s in self.reversal_steps_sweep))

    @property
    def n_adaptive_steps(self) -> int:
        return self.adaptive_steps or self.steps

    @property
    def n_transfer_steps(self) -> int:
        return self.transfer_steps or 2 * self.steps


def _check_names(what: str, names: Sequence[str], allowed: Sequence[str]) -> None:
    bad = [n for n in names if n not in allowed]
    if bad:
        raise ValueError(f"unknown {what} {bad}; choose from {list(allowed)}")


LABELS = {
    "pgd": "PGD-{steps} (CE, {restarts} restart{s})",
    "cw": "CW-margin PGD-{steps} ({restarts} restart{s})",
    "apgd-ce": "APGD-CE-{apgd_steps} (pyautoattack)",
    "autoattack": "AutoAttack standard (pyautoattack)",
    "defense_aware": "Defense-aware PGD-{asteps} (CE - {lam:g} L_ssl)",
    "bpda_eot": "BPDA + EOT-{eot} PGD-{asteps}",
    "full_gradient": "Full gradient + EOT-{eot} PGD-{asteps} ({fg_steps} reversal steps unrolled)",
    "transfer": "Transfer: PGD-{tsteps} on the undefended model",
}


# ---------------------------------------------------------------------------------------------
class ResultStore:
    """Per-example correctness: ``rows[key][idx] = bool``; JSON on disk, written atomically.

    ``meta`` identifies what was evaluated (model weights fingerprint, reversal settings, data);
    :meth:`load` refuses a file whose meta differs, so results of another model are never mixed in.
    """

    def __init__(self, meta: Optional[dict] = None) -> None:
        self.meta: dict = dict(meta or {})
        self.rows: dict[str, dict[int, bool]] = {}
        self.seconds: dict[str, float] = {}

    def has(self, key: str, idx: Iterable[int]) -> bool:
        row = self.rows.get(key)
        return row is not None and all(int(i) in row for i in idx)

    def add(self, key: str, idx: torch.Tensor | Sequence[int], correct: torch.Tensor | Sequence[bool],
            seconds: float = 0.0) -> None:
        idx = torch.as_tensor(idx).flatten().tolist()
        correct = torch.as_tensor(correct).flatten().tolist()
        if len(idx) != len(correct):
            raise ValueError(f"row {key}: {len(idx)} indices but {len(correct)} results")
        row = self.rows.setdefault(key, {})
        row.update({int(i): bool(c) for i, c in zip(idx, correct)})
        self.seconds[key] = self.seconds.get(key, 0.0) + float(seconds)

    def accuracy(self, keys: Sequence[str], subset: Optional[set] = None) -> tuple[Optional[float], int]:
        """Accuracy of the per-example AND over ``keys`` on the examples present in all of them."""
        common = self.common(keys, subset)
        if not common:
            return None, 0
        ok = sum(all(self.rows[k][i] for k in keys) for i in common)
        return ok / len(common), len(common)

    def common(self, keys: Sequence[str], subset: Optional[set] = None) -> set:
        if not keys or any(k not in self.rows for k in keys):
            return set()
        out = set(self.rows[keys[0]])
        for k in keys[1:]:
            out &= set(self.rows[k])
        return out & subset if subset is not None else out

    def merge(self, other: "ResultStore") -> "ResultStore":
        if other.meta and self.meta and other.meta != self.meta:
            raise ValueError(f"cannot merge results of different evaluations: {_diff(self.meta, other.meta)}")
        self.meta = self.meta or other.meta
        for k, row in other.rows.items():
            self.rows.setdefault(k, {}).update(row)
            self.seconds[k] = max(self.seconds.get(k, 0.0), other.seconds.get(k, 0.0))
        return self

    def to_dict(self) -> dict:
        rows = {k: {"idx": sorted(r), "correct": [int(r[i]) for i in sorted(r)]} for k, r in self.rows.items()}
        return {"format": "ssl-reversal per-example results v1", "meta": self.meta, "rows": rows,
                "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d: dict, source: str = "results") -> "ResultStore":
        if not isinstance(d, dict) or "rows" not in d or not isinstance(d["rows"], dict):
            raise ValueError(f"{source} is not a per-example results file (no 'rows' mapping)")
        store = cls(d.get("meta") or {})
        for k, r in d["rows"].items():
            try:
                store.add(k, r["idx"], [bool(c) for c in r["correct"]])
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{source}: row '{k}' is malformed ({e})") from None
        store.seconds = {k: float(v) for k, v in (d.get("seconds") or {}).items()}
        return store

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path, meta: Optional[dict] = None) -> "ResultStore":
        """Read ``path``; with ``meta``, raise if the file was written for another evaluation."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); delete it or choose another output_dir") from None
        store = cls.from_dict(d, str(path))
        if meta is not None and store.meta and _jsonable(meta) != store.meta:
            raise ValueError(
                f"{path} holds results of a different evaluation (differs in {_diff(store.meta, _jsonable(meta))}); "
                "use another output_dir, delete the file, or turn resuming off")
        return store


def _jsonable(d: Any) -> Any:
    return json.loads(json.dumps(d, default=str))


def _diff(a: dict, b: dict) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
class RobustEvaluator:
    """Runs the rows of :class:`EvalConfig` on batches and summarizes them (see the module doc).

    Args:
        model_fn: images in ``[0, 1]`` -> logits (the undefended classifier, eval mode).
        reverse_fn: the reversal ``x -> x_reversed`` (None: no "with reversal" column, no adaptive rows).
        ssl_fn: per-image contrastive loss (defense-aware attack).
        cfg: the rows and sweeps to run.
        reverse_diff_fn: ``(x, steps, smooth, use_checkpoint) -> x_reversed`` differentiable in ``x``
            (full-gradient attack).
        reverse_steps_fn: ``(x, steps) -> x_reversed`` (reversal-steps sweep).
        surrogate_fn: the transfer attack's source model (default ``model_fn``).
        store: per-example results to resume from (default: empty).
    """

    def __init__(self, model_fn: Fn, reverse_fn: Optional[Fn] = None, ssl_fn: Optional[Fn] = None,
                 cfg: Optional[EvalConfig] = None, *, reverse_diff_fn: Optional[Callable] = None,
                 reverse_steps_fn: Optional[Callable[[torch.Tensor, int], torch.Tensor]] = None,
                 surrogate_fn: Optional[Fn] = None, store: Optional[ResultStore] = None) -> None:
        self.model_fn, self.reverse_fn, self.ssl_fn = model_fn, reverse_fn, ssl_fn
        self.cfg = cfg or EvalConfig()
        self.reverse_diff_fn, self.reverse_steps_fn = reverse_diff_fn, reverse_steps_fn
        self.surrogate_fn = surrogate_fn
        self.store = store if store is not None else ResultStore()
        self.skipped: dict[str, str] = {}
        for name, need, what in (("defense_aware", ssl_fn, "ssl_fn"), ("full_gradient", reverse_diff_fn, "reverse_diff_fn")):
            if name in self.cfg.adaptive and (reverse_fn is None or need is None):
                self.skipped[name] = f"needs reverse_fn and {what}"
        if reverse_fn is None:
            for name in self.cfg.adaptive:
                self.skipped.setdefault(name, "no reversal to attack")
        if reverse_fn is None or reverse_steps_fn is None:
            self.skipped["reversal_steps_sweep"] = "needs reverse_steps_fn"

    @classmethod
    def for_reversal(cls, fns: ReversalFns, cfg: Optional[EvalConfig] = None, **kw: Any) -> "RobustEvaluator":
        """Wire every callable from a :class:`~lightning_modules.adaptive.ReversalFns`."""
        return cls(fns.model_fn, fns.reverse, fns.ssl, cfg, reverse_diff_fn=fns.reverse_diff,
                   reverse_steps_fn=fns.reverse_steps, **kw)

    # -- keys -----------------------------------------------------------------------------------
    def attack_id(self, attack: str, steps: Optional[int] = None) -> str:
        """A row's identity: the attack and every setting that changes its result."""
        c = self.cfg
        s = steps if steps is not None else (c.n_adaptive_steps if attack in WHITE_BOX_ADAPTIVE else c.steps)
        a = f"a{c.step_size:g}"
        if attack in ("pgd", "cw"):
            return f"{attack}{s}x{c.restarts}-{a}"
        if attack == "apgd-ce":
            return f"apgd-ce{c.apgd_steps}x{c.restarts}"
        if attack == "autoattack":
            return "autoattack-standard"
        if attack == "defense_aware":
            return f"defense_aware{s}x{c.restarts}-{a}-l{c.defense_aware_lambda:g}"
        if attack == "bpda_eot":
            return f"bpda_eot{s}x{c.restarts}-{a}-eot{c.eot_samples}"
        if attack == "full_gradient":
            return (f"full_gradient{s}x{c.restarts}-{a}-eot{c.eot_samples}-unroll{c.full_gradient_steps}"
                    f"-tau{c.full_gradient_smooth:g}")
        if attack == "transfer":
            return f"transfer{steps or c.n_transfer_steps}x{c.restarts}-{a}"
        raise ValueError(f"unknown attack '{attack}'")

    def label(self, attack: str) -> str:
        c = self.cfg
        if attack == "transfer" and self.surrogate_fn is not None:
            return f"Transfer: PGD-{c.n_transfer_steps} on the surrogate model"
        return LABELS[attack].format(steps=c.steps, restarts=c.restarts, s="" if c.restarts == 1 else "s",
                                     apgd_steps=c.apgd_steps, asteps=c.n_adaptive_steps, lam=c.defense_aware_lambda,
                                     eot=c.eot_samples, fg_steps=c.full_gradient_steps or "all",
                                     tsteps=c.n_transfer_steps)

    @staticmethod
    def key(*parts: Any) -> str:
        return "|".join(f"{p:.6g}" if isinstance(p, float) else str(p) for p in parts)

    def _seed(self, key: str, idx: torch.Tensor) -> int:
        s = (self.cfg.seed * 1_000_003 + zlib.crc32(key.encode()) + 7919 * int(idx.min())) % (2 ** 31 - 1)
        torch.manual_seed(s)
        return s

    # -- the attacks ----------------------------------------------------------------------------
    def defended(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(self.model_fn, self.reverse_fn(x))

    def craft(self, attack: str, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float,
              steps: Optional[int] = None, reverse_fn: Optional[Fn] = None, seed: int = 0) -> torch.Tensor:
        """``x_adv`` for one attack (``steps`` overrides its iteration count)."""
        c = self.cfg
        if eps == 0:
            return x
        alpha = c.step_size * eps
        rev = reverse_fn or self.reverse_fn
        defended = (lambda xa: logits_of(self.model_fn, rev(xa))) if rev is not None else None
        s = steps if steps is not None else (c.n_adaptive_steps if attack in WHITE_BOX_ADAPTIVE else c.steps)
        if attack in ("pgd", "cw"):
            return pgd(self.model_fn, x, y, eps, alpha, s, norm, loss="ce" if attack == "pgd" else "cw",
                       restarts=c.restarts)
        if attack == "apgd-ce":
            return apgd(self.model_fn, x, y, eps, norm, c.apgd_steps, c.restarts, "ce", seed=seed)
        if attack == "autoattack":
            return autoattack(self.model_fn, x, y, eps, norm, seed=seed)
        if attack == "defense_aware":
            return defense_aware(self.model_fn, self.ssl_fn, x, y, eps, alpha, s, norm, c.defense_aware_lambda,
                                 c.restarts, defended=defended)
        if attack == "bpda_eot":
            return bpda_eot(self.model_fn, rev, x, y, eps, alpha, s, norm, c.eot_samples, c.restarts,
                            defended=defended)
        if attack == "full_gradient":
            def rdiff(xa: torch.Tensor) -> torch.Tensor:
                return self.reverse_diff_fn(xa, c.full_gradient_steps, c.full_gradient_smooth,
                                            c.full_gradient_checkpoint)

            return full_gradient(self.model_fn, rdiff, x, y, eps, alpha, s, norm, c.eot_samples, c.restarts,
                                 batch_size=c.full_gradient_batch, defended=defended)
        if attack == "transfer":
            return transfer(self.surrogate_fn or self.model_fn, x, y, eps, alpha, steps or c.n_transfer_steps, norm,
                            c.restarts)
        raise ValueError(f"unknown attack '{attack}'")

    def _correct(self, x: torch.Tensor, y: torch.Tensor, reverse_fn: Optional[Fn] = None) -> torch.Tensor:
        if reverse_fn is not None:
            x = reverse_fn(x)
        with torch.no_grad():
            return logits_of(self.model_fn, x).argmax(1) == y

    def _row(self, key_base: str, attack: str, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, norm: str,
             eps: float, with_reversal: bool = True, steps: Optional[int] = None, seed_key: Optional[str] = None,
             reverse_fn: Optional[Fn] = None, reuse: Optional[str] = None) -> None:
        """Craft one attack on a batch and record its ``without`` and ``with`` columns."""
        rev = reverse_fn or self.reverse_fn
        cols = ["without"] + (["with"] if with_reversal and rev is not None else [])
        keys = {col: f"{key_base}|{col}" for col in cols}
        todo = [col for col in cols if not self.store.has(keys[col], idx)]
        if not todo:
            return
        if reuse is not None and all(self.store.has(f"{reuse}|{col}", idx) for col in todo):
            for col in todo:
                row = self.store.rows[f"{reuse}|{col}"]
                self.store.add(keys[col], idx, [row[int(i)] for i in idx])
            return
        t0 = time.perf_counter()
        seed = self._seed(seed_key or key_base, idx)
        x_adv = self.craft(attack, x, y, norm, eps, steps, reverse_fn=rev, seed=seed)
        t_attack = time.perf_counter() - t0
        for i, col in enumerate(todo):  # the attack's time is counted once, with its first column
            t1 = time.perf_counter()
            ok = self._correct(x_adv, y, rev if col == "with" else None)
            self.store.add(keys[col], idx, ok, seconds=(t_attack if i == 0 else 0.0) + time.perf_counter() - t1)

    # -- one batch ------------------------------------------------------------------------------
    def evaluate_batch(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> None:
        """Record every row for this batch (``x`` in ``[0, 1]``); rows already stored are skipped."""
        c = self.cfg
        x, y, idx = x.detach().float(), y.detach(), torch.as_tensor(idx).detach()
        if x.min() < 0 or x.max() > 1:
            raise ValueError("evaluate_batch expects images in [0, 1] (normalization happens inside the model)")
        if len(x) != len(y) or len(x) != len(idx):
            raise ValueError(f"batch sizes differ: x {len(x)}, y {len(y)}, idx {len(idx)}")
        if self.reverse_fn is not None and len(x) < 2:
            raise ValueError("the reversal needs batches of at least 2 images")
        idx_cpu = idx.cpu()
        # clean
        for col in ["without"] + (["with"] if self.reverse_fn is not None else []):
            key = f"clean|{col}"
            if not self.store.has(key, idx_cpu.tolist()):
                t0 = time.perf_counter()
                self._seed(key, idx_cpu)
                ok = self._correct(x, y, self.reverse_fn if col == "with" else None)
                self.store.add(key, idx_cpu, ok, time.perf_counter() - t0)
        # main table
        for norm, eps in c.threat_models.items():
            for attack in c.attacks + c.adaptive:
                if attack in self.skipped:
                    continue
                self._row(self.key(norm, eps, self.attack_id(attack)), attack, x, y, idx_cpu, norm, eps)
        # sweeps on the first examples
        if c.eps_sweep and c.eps_sweep_attacks:
            sel = _subset(idx_cpu, c.eps_sweep_n, self.reverse_fn is not None)
            if sel is not None:
                xs, ys, ids = x[sel], y[sel], idx_cpu[sel.cpu()]
                norm = c.eps_sweep_norm
                for eps in c.eps_sweep:
                    for attack in c.eps_sweep_attacks:
                        if attack in self.skipped:
                            continue
                        aid = self.attack_id(attack)
                        main = self.key(norm, eps, aid) if c.threat_models.get(norm) == eps else None
                        if eps == 0:  # no attack: the clean rows
                            aid, main = "none", "clean"
                        self._row(self.key("eps-sweep", norm, eps, aid), attack, xs, ys, ids, norm, eps, reuse=main)
        norm0, eps0 = next(iter(c.threat_models.items()), ("Linf", 8 / 255))
        sel = _subset(idx_cpu, c.steps_sweep_n, self.reverse_fn is not None)
        if sel is not None:
            xs, ys, ids = x[sel], y[sel], idx_cpu[sel.cpu()]
            for attack in c.steps_sweep_attacks:
                if attack in self.skipped:
                    continue
                for s in c.attack_steps_sweep:
                    aid = self.attack_id(attack, steps=s)
                    # one seed for all step counts: the same random start, so only the steps differ
                    self._row(self.key("steps-sweep", norm0, eps0, aid), attack, xs, ys, ids, norm0, eps0, steps=s,
                              seed_key=self.key("steps-sweep", attack))
            if "reversal_steps_sweep" not in self.skipped:
                self._reversal_sweep(xs, ys, ids, norm0, eps0)
            if c.sanity_checks and c.standard_model:
                aid = self.attack_id("pgd", steps=20)
                self._row(self.key("sanity", "Linf", 8 / 255, aid), "pgd", xs, ys, ids, "Linf", 8 / 255,
                          with_reversal=False, steps=20, reuse=self.key("Linf", 8 / 255, aid))

    def _reversal_sweep(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, norm: str, eps: float) -> None:
        c = self.cfg
        x_pgd = None
        for k in c.reversal_steps_sweep:
            rev_k = lambda xa, k=k: self.reverse_steps_fn(xa, k)  # noqa: E731
            key = self.key("rev-sweep", k, "clean", "with")
            if not self.store.has(key, idx.tolist()):
                self._seed(key, idx)
                self.store.add(key, idx, self._correct(x, y, rev_k))
            for attack in c.reversal_sweep_attacks:
                if attack == "pgd":
                    key = self.key("rev-sweep", k, self.key(norm, eps, self.attack_id("pgd")), "with")
                    if self.store.has(key, idx.tolist()):
                        continue
                    if x_pgd is None:  # crafted once on the classifier; seeded as the main PGD row
                        self._seed(self.key(norm, eps, self.attack_id("pgd")), idx)
                        x_pgd = self.craft("pgd", x, y, norm, eps)
                    self._seed(key, idx)
                    self.store.add(key, idx, self._correct(x_pgd, y, rev_k))
                elif "bpda_eot" not in self.skipped:
                    base = self.key("rev-sweep", k, self.key(norm, eps, self.attack_id("bpda_eot")))
                    self._row(base, "bpda_eot", x, y, idx, norm, eps, reverse_fn=rev_k)

    def evaluate(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> dict:
        """Convenience loop over tensors (``idx`` = position); returns :meth:`summary`."""
        for s in range(0, len(x), batch_size):
            e = min(len(x), s + batch_size)
            if len(x) - e == 1 and self.reverse_fn is not None:  # never leave a 1-image last batch
                e = len(x)
            self.evaluate_batch(x[s:e], y[s:e], torch.arange(s, e))
            if e == len(x):
                break
        return self.summary()

    # -- results --------------------------------------------------------------------------------
    def _col(self, base: str) -> dict:
        st = self.store
        out: dict[str, Any] = {}
        keys = [f"{base}|without"] + ([f"{base}|with"] if f"{base}|with" in st.rows else [])
        common = st.common(keys)
        for col in ("without", "with"):
            k = f"{base}|{col}"
            out[col] = st.accuracy([k], common)[0] if k in st.rows else None
        out["n"] = len(common)
        out["time_s"] = round(sum(st.seconds.get(k, 0.0) for k in keys), 3)
        return out

    def rows(self) -> list[dict]:
        c, out = self.cfg, []
        for norm, eps in c.threat_models.items():
            for attack in c.attacks + c.adaptive:
                if attack in self.skipped:
                    continue
                base = self.key(norm, eps, self.attack_id(attack))
                if f"{base}|without" not in self.store.rows:
                    continue
                out.append({"threat": norm, "eps": eps, "eps_label": eps_label(eps, norm), "attack": attack,
                            "key": self.attack_id(attack), "label": self.label(attack),
                            "kind": "adaptive" if attack in ADAPTIVE else "non-adaptive", **self._col(base)})
        return out

    def worst_case(self) -> list[dict]:
        """Per threat model: an example is robust only if clean and every attack row got it right."""
        c, st, out = self.cfg, self.store, []
        for norm, eps in c.threat_models.items():
            bases = [self.key(norm, eps, self.attack_id(a)) for a in c.attacks + c.adaptive if a not in self.skipped]
            bases = [b for b in bases if f"{b}|without" in st.rows]
            if not bases:
                continue
            entry: dict[str, Any] = {"threat": norm, "eps": eps, "eps_label": eps_label(eps, norm)}
            for col in ("without", "with"):
                keys = [f"clean|{col}"] + [f"{b}|{col}" for b in bases]
                keys = [k for k in keys if k in st.rows]
                if col == "with" and "clean|with" not in st.rows:
                    entry[col] = None
                    continue
                acc, n = st.accuracy(keys)
                entry[col], entry[f"n_{col}"] = acc, n
                if col == "with":
                    entry["attacks_with"] = [k.split("|")[2] for k in keys if k != "clean|with"]
            entry["n"] = entry.get("n_without", 0)
            out.append(entry)
        return out

    def sweeps(self) -> dict:
        c, st = self.cfg, self.store
        eps_rows, steps_rows, rev_rows = [], [], []
        for eps in c.eps_sweep:
            for attack in c.eps_sweep_attacks:
                aid = "none" if eps == 0 else self.attack_id(attack) if attack not in self.skipped else None
                base = self.key("eps-sweep", c.eps_sweep_norm, eps, aid)
                if aid is None or f"{base}|without" not in st.rows:
                    continue
                eps_rows.append({"norm": c.eps_sweep_norm, "eps": eps, "eps_label": eps_label(eps, c.eps_sweep_norm),
                                 "attack": attack, "kind": "adaptive" if attack in ADAPTIVE else "non-adaptive",
                                 **self._col(base)})
        norm0, eps0 = next(iter(c.threat_models.items()), ("Linf", 8 / 255))
        for attack in c.steps_sweep_attacks:
            for s in c.attack_steps_sweep:
                base = self.key("steps-sweep", norm0, eps0, self.attack_id(attack, steps=s))
                if f"{base}|without" in st.rows:
                    steps_rows.append({"norm": norm0, "eps": eps0, "attack": attack, "steps": s,
                                       "kind": "adaptive" if attack in ADAPTIVE else "non-adaptive", **self._col(base)})
        for k in c.reversal_steps_sweep:
            key = self.key("rev-sweep", k, "clean", "with")
            if key in st.rows:
                acc, n = st.accuracy([key])
                rev_rows.append({"reversal_steps": k, "attack": "clean", "with": acc, "n": n})
            for attack in c.reversal_sweep_attacks:
                key = self.key("rev-sweep", k, self.key(norm0, eps0, self.attack_id(attack)), "with")
                if key in st.rows:
                    acc, n = st.accuracy([key])
                    rev_rows.append({"reversal_steps": k, "attack": attack, "norm": norm0, "eps": eps0, "with": acc,
                                     "n": n})
        return {"eps": eps_rows, "attack_steps": steps_rows, "reversal_steps": rev_rows}

    def tolerance(self, p: Optional[float], n: int) -> float:
        if self.cfg.noise_tolerance is not None:
            return self.cfg.noise_tolerance
        if not n:
            return 0.0
        p = 0.5 if p is None else p
        return 2 * math.sqrt(max(p * (1 - p), 0.0) / n) + 1 / n

    def sanity_checks(self, rows: list[dict], sweeps: dict) -> list[dict]:
        """The checks of the issue; each ``{"name", "passed" (True/False/None=skipped), "detail"}``."""
        c, st, out = self.cfg, self.store, []
        zt = c.zero_tolerance

        def add(name: str, passed: Optional[bool], detail: str) -> None:
            out.append({"name": name, "passed": passed, "detail": detail})

        # 1. accuracy -> ~0 as eps grows
        big = [r for r in sweeps["eps"] if r["eps"] == max(c.eps_sweep, default=0) and r["eps"] > 0]
        if big:
            e = big[0]["eps_label"]
            for r in big:  # the classifier under its own attacks; the defended model under adaptive ones
                col = "with" if r["kind"] == "adaptive" else "without"
                if r[col] is None:
                    continue
                add(f"eps->large: {r['attack']} {col} reversal at {c.eps_sweep_norm} {e} ~ 0",
                    r[col] <= zt, f"accuracy {r[col]:.2%} (n={r['n']}), must be <= {zt:.0%}")
            if max(c.eps_sweep) < 32 / 255 and c.eps_sweep_norm == "Linf":
                add("eps->large: sweep reaches a large eps", False,
                    f"largest eps {e} < 32/255: the check that accuracy goes to 0 is not meaningful")
        else:
            add("eps->large: accuracy goes to ~0", None, "skipped (no eps sweep)")
        # 2. an undefended standard model is broken by PGD-20 at 8/255
        if c.standard_model:
            key = self.key("sanity", "Linf", 8 / 255, self.attack_id("pgd", steps=20), "without")
            acc, n = st.accuracy([key])
            add("standard model ~0% under PGD-20 at 8/255", None if acc is None else acc <= zt,
                "not run" if acc is None else f"accuracy {acc:.2%} (n={n}), must be <= {zt:.0%}")
        # 3. transfer >= white-box; 5. adaptive >= non-adaptive (with reversal)
        for norm, eps in c.threat_models.items():
            lab = f"{norm} {eps_label(eps, norm)}"
            mine = [r for r in rows if r["threat"] == norm and r["eps"] == eps]
            by = {r["attack"]: r for r in mine}
            wb = [r for r in mine if r["attack"] in WHITE_BOX_ADAPTIVE and r["with"] is not None]
            nonad = [r for r in mine if r["attack"] in NON_ADAPTIVE and r["with"] is not None]
            if "transfer" in by:
                t = by["transfer"]
                if wb and t["with"] is not None:
                    best = min(wb, key=lambda r: r["with"])
                    tol = self.tolerance(best["with"], min(t["n"], best["n"]))
                    add(f"{lab}: transfer >= white-box (with reversal)", t["with"] >= best["with"] - tol,
                        f"transfer {t['with']:.2%} vs {best['attack']} {best['with']:.2%} (tolerance {tol:.2%})")
                if "pgd" in by:
                    p = by["pgd"]
                    tol = self.tolerance(p["without"], min(t["n"], p["n"]))
                    add(f"{lab}: transfer >= white-box PGD (without reversal)", t["without"] >= p["without"] - tol,
                        f"transfer {t['without']:.2%} vs PGD {p['without']:.2%} (tolerance {tol:.2%})")
            if wb and nonad:
                best_wb, best_na = min(wb, key=lambda r: r["with"]), min(nonad, key=lambda r: r["with"])
                tol = self.tolerance(best_na["with"], min(best_wb["n"], best_na["n"]))
                add(f"{lab}: adaptive attacks at least as strong as non-adaptive (with reversal)",
                    best_wb["with"] <= best_na["with"] + tol,
                    f"strongest adaptive {best_wb['attack']} {best_wb['with']:.2%} vs strongest non-adaptive "
                    f"{best_na['attack']} {best_na['with']:.2%} (tolerance {tol:.2%})")
        # 4. more steps never raise accuracy beyond noise
        for attack in c.steps_sweep_attacks:
            pts = sorted((r for r in sweeps["attack_steps"] if r["attack"] == attack), key=lambda r: r["steps"])
            col = "with" if attack in ADAPTIVE and self.reverse_fn is not None else "without"
            bad = []
            for a, b in zip(pts, pts[1:]):
                if a[col] is None or b[col] is None:
                    continue
                tol = self.tolerance(a[col], min(a["n"], b["n"]))
                if b[col] > a[col] + tol:
                    bad.append(f"{a['steps']}->{b['steps']} steps: {a[col]:.2%} -> {b[col]:.2%} (tolerance {tol:.2%})")
            if len(pts) >= 2:
                curve = ", ".join(f"{r['steps']}: {r[col]:.2%}" for r in pts if r[col] is not None)
                add(f"more {attack} steps never raise accuracy ({col} reversal)", not bad,
                    "; ".join(bad) if bad else f"accuracy by steps {curve}")
        return out

    def summary(self) -> dict:
        """Everything the report needs (JSON-serializable)."""
        st = self.store
        rows, sweeps = self.rows(), self.sweeps()
        clean = self._col("clean")
        worst = self.worst_case()
        headline = {}
        for w in worst:
            headline[f"{w['threat']} {w['eps_label']}"] = {"without": w["without"], "with": w["with"], "n": w["n"]}
        n_all = len(set().union(*[set(r) for r in st.rows.values()])) if st.rows else 0
        return {
            "meta": {**st.meta, "config": _jsonable(dataclasses.asdict(self.cfg)), "skipped": dict(self.skipped)},
            "n_examples": n_all,
            "clean": clean,
            "rows": rows,
            "worst_case": worst,
            "headline": headline,
            "sweeps": sweeps,
            "sanity": self.sanity_checks(rows, sweeps) if self.cfg.sanity_checks else [],
        }


def _subset(idx: torch.Tensor, n: int, need_two: bool) -> Optional[torch.Tensor]:
    """Positions of the batch with ``idx < n``; at least two when the reversal runs on them."""
    sel = (idx < n).nonzero().flatten()
    if len(sel) == 0:
        return None
    if need_two and len(sel) == 1:
        if len(idx) < 2:
            return None
        other = [i for i in range(len(idx)) if i != int(sel[0])][:1]
        sel = torch.tensor(sorted([int(sel[0])] + other))
    return sel


__all__ = ["EvalConfig", "ResultStore", "RobustEvaluator", "parse_eps", "eps_label", "atomic_write_text",
           "NON_ADAPTIVE", "ADAPTIVE"]
