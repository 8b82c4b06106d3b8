"""The rows of an evaluation: :func:`build_catalog` lists, from an
:class:`~lightning_modules.evaluation.config.EvalConfig`, every :class:`Row` in the order it runs —
clean, the main table (every attack, variant and threat model), the eps, steps, EOT and
reversal-steps sweeps, the sanity rows. A row's key spells out every setting that changes its
result, so a changed setting is a new row, never a stale one.

Example:
    >>> from lightning_modules.evaluation.catalog import build_catalog
    >>> from lightning_modules.evaluation.config import EvalConfig
    >>> off = {"eps_sweep": [], "attack_steps_sweep": [], "eot_sweep": [], "reversal_steps_sweep": []}
    >>> cfg = EvalConfig(threat_models={"Linf": "8/255"}, attacks=["pgd", "defense_aware"], sweeps=off,
    ...                  scoring={"composition": ["batch2"]}, adaptive={"defense_aware_lambdas": [0.1, 1]})
    >>> rows = build_catalog(cfg, True, lambda name: None, True)
    >>> [(r.attack, r.columns) for r in rows][:2]
    [('clean', ('without', 'with', 'with@batch2')), ('pgd', ('without', 'with', 'with@batch2'))]
    >>> len(rows), rows[1].key, rows[1].composition("with@batch2")  # clean, pgd, defense-aware at two lambdas
    (4, 'main|Linf|0.0313725|pgd20x1-a0.25', 'batch2')
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

from .config import EvalConfig
from .registry import ATTACKS, SETTINGS, main_setting, validate


def key(*parts: Any) -> str:
    return "|".join(f"{p:.6g}" if isinstance(p, float) else str(p) for p in parts)


@dataclass(frozen=True)
class Row:
    """One row: an attack (or ``clean``) with its settings, on examples ``idx < subset``. Its columns are
    ``without``, ``with`` and ``with@<composition>``; :attr:`key` (with ``|<column>``) names it in the store."""

    group: str  # main | eps-sweep | steps-sweep | eot-sweep | rev-sweep | sanity | clean
    attack: str = "clean"
    norm: str = ""
    eps: float = 0.0
    ident: str = "clean"  # the attack's settings (Attack.ident)
    cfg: Optional[EvalConfig] = None
    params: dict = field(default_factory=dict)
    columns: tuple[str, ...] = ("without",)
    subset: Optional[int] = None
    seed_key: Optional[str] = None
    reuse: Optional[str] = None  # the key of a row with the same result: copy it
    reversal_steps: Optional[int] = None
    label: str = "clean"
    kind: str = "non-adaptive"
    setting: Optional[int] = None  # the swept value (steps, EOT, reversal steps)
    cascade: bool = False  # runs only on the examples still robust at its budget (scoring.cascade)
    stop_draws: bool = False  # "with" columns: an example wrong on its first draw is not drawn again (cascade)

    @property
    def key(self) -> str:
        if self.group == "clean":
            return "clean"
        at = (self.norm, self.eps) if self.attack != "clean" else ()
        return key(self.group, *((self.reversal_steps,) if self.group == "rev-sweep" else ()), *at, self.ident)

    def cell(self, column: str) -> str:
        """The store's key of one column."""
        return f"{self.key}|{column}"

    @staticmethod
    def composition(column: str) -> str:
        """The batch composition a ``with`` column is scored in (``batch``: the batch as it is)."""
        return column.partition("@")[2] or "batch"


def build_catalog(
    c: EvalConfig,
    rev: bool,
    missing: Callable[[str], Optional[str]],
    reversal_sweep: bool,
    reversal_steps: Optional[int] = None,
) -> list[Row]:
    """Every row of the evaluation, in the order they run.

    Args:
        c: the settings.
        rev: the model has a reversal ("with" columns and attacks on the defense).
        missing: why an attack cannot run on this model (None: it can); such attacks get no rows.
        reversal_sweep: run the reversal-steps sweep.
        reversal_steps: the reversal's own steps (its sweep's row at that value copies the main rows').
    """
    c = validate(c)
    sw, cascade = c.sweeps, c.scoring.cascade and rev
    comps = [f"with@{m}" for m in c.scoring.composition] if rev else []

    def attack_row(group: str, name: str, norm: str, eps: float, cfg: EvalConfig, subset: Optional[int], **kw) -> Row:
        a = ATTACKS[name]
        v = kw.pop("params", a.variants(cfg)[0])
        sub = [x for x in (subset, a.subset(cfg)) if x]
        cols = ("without",) + (("with",) if rev else ())
        cols = kw.pop("columns", cols + (tuple(comps) if group == "main" and c.with_composition(name) else ()))
        stop, sub = cascade and "with" in cols, min(sub) if sub else None
        label = a.label(cfg, v)
        return Row(
            group, name, norm, eps, a.ident(cfg, v), cfg, v, cols, sub, label=label, kind=a.kind, stop_draws=stop, **kw
        )

    clean_comps = [m for m in comps if m != "with@clean_mates"] if c.with_composition("clean") else []
    rows = [Row("clean", columns=("without",) + (("with", *clean_comps) if rev else ()), stop_draws=cascade)]
    live = [a for a in c.attacks if not missing(a)]
    main: dict[tuple, str] = {}
    for norm, eps in c.threat_models.items():
        for name in (n for n in live if norm in ATTACKS[n].norms):
            for v in ATTACKS[name].variants(c):
                casc = cascade and eps > 0 and not ATTACKS[name].whole
                r = attack_row("main", name, norm, eps, c, None, params=v, cascade=casc)
                main[(norm, eps, name, r.ident)] = r.key
                rows.append(r)
    for eps in sw.eps_sweep:
        for name in sw.eps_sweep_attacks:
            if not missing(name) and eps != 0:  # eps 0: the clean rows
                r = attack_row("eps-sweep", name, sw.eps_sweep_norm, eps, c, sw.eps_sweep_n)
                rows.append(replace(r, reuse=main.get((r.norm, eps, name, r.ident))))
    norm0, eps0 = c.main
    sweeps = (
        ("steps-sweep", sw.steps_sweep_attacks, sw.attack_steps_sweep),
        ("eot-sweep", sw.eot_sweep_attacks, sw.eot_sweep),
    )
    for group, names, swept in sweeps:  # each sweep's values include the main setting
        for name in (n for n in names if swept and not missing(n)):
            if group == "steps-sweep":
                path, own = SETTINGS[ATTACKS[name].steps], main_setting(c, name)
            else:
                path, own = "attack.eot", c.attack.eot
            for v in sorted({own, *swept}):
                cv = c.replace(path, v)
                casc = cascade and not ATTACKS[name].whole  # cascade: on the main rows' survivors
                r = attack_row(
                    group, name, norm0, eps0, cv, sw.steps_sweep_n, seed_key=key(group, name), setting=v, cascade=casc
                )
                rows.append(replace(r, reuse=main.get((norm0, eps0, name, r.ident))))
    if reversal_sweep:
        for k in sw.reversal_steps_sweep:
            kw = dict(reversal_steps=k, setting=k, columns=("with",))
            own = "clean" if k == reversal_steps else None
            rows.append(Row("rev-sweep", subset=sw.steps_sweep_n, reuse=own, stop_draws=cascade, **kw))
            for name in (n for n in sw.reversal_sweep_attacks if not missing(n)):
                r = attack_row("rev-sweep", name, norm0, eps0, c, sw.steps_sweep_n, params={}, **kw)
                if name == "pgd":  # crafted once on the classifier: seeded as the main PGD row
                    seed = key("main", norm0, eps0, r.ident)
                    r = replace(r, seed_key=seed, reuse=seed if k == reversal_steps else None)
                rows.append(r)
    if c.checks.sanity_checks and c.checks.standard_model:
        cs = c.replace("attack.steps", 20)
        rows.append(attack_row("sanity", "pgd", "Linf", 8 / 255, cs, sw.steps_sweep_n, params={}, columns=("without",)))
    return rows


__all__ = ["Row", "key", "build_catalog"]
