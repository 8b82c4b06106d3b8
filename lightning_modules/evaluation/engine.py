"""The evaluator loop: every row of :class:`~lightning_modules.evaluation.config.EvalConfig` on each batch.

:meth:`RobustEvaluator.catalog` lists the rows once (main table, sweeps, sanity rows), each a
:class:`Row` with a key that spells out every setting that changes its result; :meth:`evaluate_batch`
crafts each row's attack on the batch (seeded from the row and the batch's indices) and stores,
per example, the classifier's verdict (``without``) and the count of correct draws of the reversal
(``with``, and one ``with@<composition>`` column per batch composition). Rows already stored for a
batch are skipped (resume). After every row ``on_row_done`` runs (the callback saves the store) and
``should_stop`` is asked (SIGTERM): the evaluation then stops with :class:`EvaluationStopped`,
everything done so far saved. ``log`` receives one progress line per row with the time left.

Example:
    >>> import torch
    >>> from lightning_modules.defense import DefendedModel, ReversalConfig
    >>> from lightning_modules.nn.backbones import build_backbone
    >>> from lightning_modules.evaluation import EvalConfig, RobustEvaluator
    >>> from lightning_modules.nn.heads import ContrastiveHead
    >>> net, head = build_backbone("small_cnn", width=8).eval(), ContrastiveHead(32, 64, 16).eval()
    >>> defended = DefendedModel(net, head, ReversalConfig(steps=2))
    >>> cfg = EvalConfig(threat_models={"Linf": "8/255"}, attacks=["pgd", "bpda_eot"], attack={"steps": 2, "eot": 1},
    ...                  scoring={"draws": 2, "composition": []}, progress=False, sweeps={"eps_sweep": [],
    ...                  "attack_steps_sweep": [], "eot_sweep": [], "reversal_steps_sweep": []})
    >>> ev = RobustEvaluator(defended, cfg)
    >>> ev.evaluate_batch(torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,)), torch.arange(4))
    >>> [r["attack"] for r in ev.summary()["rows"]]
    ['pgd', 'bpda_eot']
"""

from __future__ import annotations

import sys
import time
import zlib
from typing import Callable, Optional, Sequence

import torch

from ..defense.model import DefendedModel, chunks
from ..util import duration
from .catalog import Row, build_catalog, key
from .config import EvalConfig
from .registry import ATTACKS, WHY_MISSING, Job, validate
from .store import ResultStore


class EvaluationStopped(SystemExit):
    """The evaluation was asked to stop (SIGTERM) between two rows; what was done is saved."""


class RobustEvaluator:
    """Runs the rows on batches and summarizes them (see the module doc).

    Args:
        defense: the defended model (:class:`~lightning_modules.defense.model.DefendedModel`).
        cfg: the rows to run.
        store: per-example results to resume from (default: empty).
        should_stop: asked before every row; True stops with :class:`EvaluationStopped`.
        on_row_done: called after every row (save the store here).
        log: progress lines (default: stderr when ``cfg.progress``).
        n_batches: batches this process will see (for the time left).
    """

    def __init__(
        self,
        defense: DefendedModel,
        cfg: Optional[EvalConfig] = None,
        store: Optional[ResultStore] = None,
        *,
        should_stop: Optional[Callable[[], bool]] = None,
        on_row_done: Optional[Callable[[], None]] = None,
        log: Optional[Callable[[str], None]] = None,
        n_batches: Optional[int] = None,
    ) -> None:
        self.defense, self.cfg = defense, validate(cfg or EvalConfig())
        self.store = store if store is not None else ResultStore()
        self.should_stop, self.on_row_done, self.n_batches = should_stop, on_row_done, n_batches
        self.log = log or ((lambda s: print(s, file=sys.stderr, flush=True)) if self.cfg.progress else (lambda s: None))
        self.skipped: dict[str, str] = {n: self.missing(n) for n in self.cfg.attacks if self.missing(n)}
        if self.cfg.sweeps.reversal_steps_sweep and not defense.has("reverse_steps"):
            self.skipped["reversal_steps_sweep"] = "needs the reversal (reverse_steps_fn)"
        self._batches_done, self._batch_seconds = 0, 0.0

    def missing(self, name: str) -> Optional[str]:
        """Why attack ``name`` cannot run on this defense (None: it can)."""
        absent = [n for n in ATTACKS[name].needs if not self.defense.has(n)]
        return WHY_MISSING[absent[0]] if absent else None

    # -- the rows -------------------------------------------------------------------------------
    def catalog(self) -> list[Row]:
        """Every row of the evaluation, in the order they run (:func:`~.catalog.build_catalog`)."""
        d = self.defense
        own_steps = d.cfg.steps if d.head is not None else None
        return build_catalog(
            self.cfg, d.has("reverse"), self.missing, "reversal_steps_sweep" not in self.skipped, own_steps
        )

    # -- one batch ------------------------------------------------------------------------------
    def _seed(self, seed_key: str, idx: torch.Tensor) -> int:
        s = (self.cfg.scoring.seed * 1_000_003 + zlib.crc32(seed_key.encode()) + 7919 * int(idx.min())) % (2**31 - 1)
        torch.manual_seed(s)
        return s

    def _select(self, row: Row, idx: torch.Tensor, earlier: Sequence[Row] = ()) -> Optional[torch.Tensor]:
        """Positions of the batch the row runs on (at least two when the reversal runs on them); a
        cascaded row keeps those still robust after ``earlier`` (:func:`~.summary.still_robust`)."""
        sel = torch.arange(len(idx)) if row.subset is None else (idx < row.subset).nonzero().flatten()
        if row.cascade and len(sel):
            from .summary import still_robust

            keep = torch.tensor(still_robust(self.store, earlier, row, idx[sel].tolist()), dtype=torch.bool)
            if keep.sum() == 1 and len(sel) > 1:  # one survivor: a decided batch-mate joins it (a negative)
                keep[int((~keep).nonzero()[0])] = True
            sel = sel[keep]
        if len(sel) == 0 or (len(sel) == 1 and any(c != "without" for c in row.columns)):
            return None
        return sel

    def _run_row(
        self, row: Row, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, earlier: Sequence[Row] = ()
    ) -> None:
        c, st = self.cfg.scoring, self.store
        d = self.defense.for_threat(row.norm, row.eps) if c.reversal_per_threat else self.defense
        if not c.draws_in_one_call:
            d = d.one_call_per_draw()
        sel = self._select(row, idx, earlier)
        if sel is None:
            return
        ids = idx[sel]
        todo = [col for col in row.columns if not st.has(f"{row.key}|{col}", ids.tolist())]
        if not todo:
            return
        if row.reuse is not None and all(st.has(f"{row.reuse}|{col}", ids.tolist()) for col in todo):
            for col in todo:
                src = f"{row.reuse}|{col}"
                st.add(f"{row.key}|{col}", ids, [st.rows[src][int(i)] for i in ids], draws=st.draws[src])
            return
        xs, ys = x[sel.to(x.device)], y[sel.to(y.device)]
        t0 = time.perf_counter()
        seed = self._seed(row.seed_key or row.key, ids)
        if row.attack == "clean":
            x_adv = xs
        else:
            steps = row.reversal_steps if ATTACKS[row.attack].adaptive else None
            job = Job(xs, ys, row.norm, row.eps, row.cfg or self.cfg, d, row.params, seed, reversal_steps=steps)
            x_adv = ATTACKS[row.attack].craft(job) if row.eps > 0 else xs
        self._seed(key(row.seed_key or row.key, "score"), ids)
        for col in todo:
            if col == "without":
                st.add(f"{row.key}|without", ids, d.predict(x_adv) == ys)
            else:
                comp, stop = row.composition(col), row.stop_draws
                counts = d.correct_draws(
                    x_adv, ys, c.draws, comp, xs, c.mates_groups, steps=row.reversal_steps, stop_after_wrong=stop
                )
                st.add(f"{row.key}|{col}", ids, counts, draws=c.draws)
        st.seconds[f"{row.key}|{todo[0]}"] = st.seconds.get(f"{row.key}|{todo[0]}", 0.0) + time.perf_counter() - t0

    def evaluate_batch(
        self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, batch_idx: Optional[int] = None
    ) -> None:
        """Record every row for this batch (``x`` in ``[0, 1]``); rows already stored are skipped."""
        x, y, idx = x.detach().float(), y.detach(), torch.as_tensor(idx).detach().cpu()
        if x.min() < 0 or x.max() > 1:
            raise ValueError("evaluate_batch expects images in [0, 1] (normalization happens inside the model)")
        if len(x) != len(y) or len(x) != len(idx):
            raise ValueError(f"batch sizes differ: x {len(x)}, y {len(y)}, idx {len(idx)}")
        if self.defense.has("reverse") and len(x) < 2:
            raise ValueError("the reversal needs batches of at least 2 images")
        rows = self.catalog()
        b = self._batches_done if batch_idx is None else batch_idx
        t_batch = time.perf_counter()
        for i, row in enumerate(rows):
            if self.should_stop is not None and self.should_stop():
                raise EvaluationStopped(
                    f"evaluation stopped (SIGTERM) before row {i + 1}/{len(rows)} of batch {b + 1}: "
                    "every finished row is saved; rerun the same command to resume"
                )
            t0 = time.perf_counter()
            self._run_row(row, x, y, idx, rows[:i])
            if self.on_row_done is not None:
                self.on_row_done()
            self.log(self._progress(b, i, len(rows), row, time.perf_counter() - t0, time.perf_counter() - t_batch))
        self._batches_done += 1
        self._batch_seconds += time.perf_counter() - t_batch

    def evaluate(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> dict:
        """Convenience loop over tensors (``idx`` = position, a 1-image tail merged); returns :meth:`summary`."""
        plain = [(s, min(len(x), s + batch_size)) for s in range(0, len(x), batch_size)]
        spans = chunks(len(x), batch_size) if self.defense.has("reverse") else plain
        self.n_batches = self.n_batches or len(spans)
        for b, (s, e) in enumerate(spans):
            self.evaluate_batch(x[s:e], y[s:e], torch.arange(s, e), b)
        return self.summary()

    def _progress(self, b: int, i: int, n_rows: int, row: Row, dt: float, in_batch: float) -> str:
        nb = f"/{self.n_batches}" if self.n_batches else ""
        where = f"{row.group} {row.norm} {row.label}".replace("  ", " ").strip()
        left = ""
        if self.n_batches:
            per_batch = self._batch_seconds / self._batches_done if self._batches_done else in_batch / (i + 1) * n_rows
            rest = per_batch * (self.n_batches - self._batches_done) - in_batch
            left = f", about {duration(max(rest, 0.0))} left" + ("" if self._batches_done else " (first batch: rough)")
        return f"[eval] batch {b + 1}{nb} row {i + 1}/{n_rows} {where}: {dt:.1f} s{left}"

    def summary(self) -> dict:
        from .summary import summarize

        return summarize(self.store, self.catalog(), self.cfg, self.skipped)


__all__ = ["RobustEvaluator", "EvaluationStopped", "Row", "key"]
