"""The rows of an evaluation: :func:`build_catalog` lists, from an
:class:`~lightning_modules.evaluation.config.EvalConfig`, every :class:`Row` in the order it runs —
clean, the main table (every attack, variant and threat model), the eps, steps, EOT and
reversal-steps sweeps, the sanity rows. A row's key spells out every setting that changes its
result, so a changed setting is a new row, never a stale one.

Example:
    >>> from lightning_modules.evaluation.catalog import build_catalog
    >>> from lightning_modules.evaluation.config import EvalConfig
    >>> cfg = EvalConfig(threat_models={"Linf": "8/255"}, attacks=["pgd", "defense_aware"], composition=["batch2"],
    ...                  defense_aware_lambdas=[0.1, 1], eps_sweep=[], attack_steps_sweep=[], eot_sweep=[],
    ...                  reversal_steps_sweep=[])
    >>> [(r.attack, r.columns) for r in build_catalog(cfg, True, lambda name: None, True)][:2]
    [('clean', ('without', 'with', 'with@batch2')), ('pgd', ('without', 'with', 'with@batch2'))]
    >>> len(build_catalog(cfg, True, lambda name: None, True))  # clean, pgd, defense-aware at two lambdas
    4
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .config import EvalConfig
from .registry import ATTACKS, main_setting


def key(*parts: Any) -> str:
    return "|".join(f"{p:.6g}" if isinstance(p, float) else str(p) for p in parts)


@dataclass
class Row:
    """One row: an attack (or ``clean``) with its settings, on examples ``idx < subset``."""

    key: str
    group: str  # main | eps-sweep | steps-sweep | eot-sweep | rev-sweep | sanity | clean
    attack: str
    norm: str = ""
    eps: float = 0.0
    cfg: Optional[EvalConfig] = None
    params: dict = field(default_factory=dict)
    columns: tuple[str, ...] = ("without",)
    subset: Optional[int] = None
    seed_key: Optional[str] = None
    reuse: Optional[str] = None  # a row with the same result: copy it
    reversal_steps: Optional[int] = None
    label: str = ""
    kind: str = "non-adaptive"
    setting: Optional[int] = None  # the swept value (steps, EOT, reversal steps)
    cascade: bool = False  # runs only on the examples still robust at its budget (EvalConfig.cascade)
    stop_draws: bool = False  # "with" columns: an example wrong on its first draw is not drawn again (cascade)


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
    rows: list[Row] = []

    def columns(attack: str, group: str) -> tuple[str, ...]:
        cols = ("without",) + (("with",) if rev else ())
        if rev and group == "main" and c.with_composition(attack):
            cols += tuple(f"with@{m}" for m in c.composition)
        return cols

    def attack_row(
        group: str, name: str, norm: str, eps: float, cfg: EvalConfig, params: dict, subset: Optional[int], **kw: Any
    ) -> Row:
        a = ATTACKS[name]
        ident = a.ident(cfg, params)
        sub = min(x for x in (subset, a.subset(cfg)) if x is not None) if (subset or a.subset(cfg)) else None
        return Row(
            key(group, norm, eps, ident),
            group,
            name,
            norm,
            eps,
            cfg,
            params,
            columns(name, group),
            sub,
            label=a.label(cfg, params),
            kind=a.kind,
            **kw,
        )

    clean_cols = (
        ("without",)
        + (("with",) if rev else ())
        + (
            tuple(f"with@{m}" for m in c.composition if m != "clean_mates")
            if rev and c.with_composition("clean")
            else ()
        )
    )
    rows.append(Row("clean", "clean", "clean", columns=clean_cols, label="clean"))
    live = [a for a in c.attacks if not missing(a)]
    main: dict[tuple, str] = {}
    for norm, eps in c.threat_models.items():
        for name in live:
            if norm not in ATTACKS[name].norms:
                continue
            for v in ATTACKS[name].variants(c):
                r = attack_row("main", name, norm, eps, c, v, None)
                r.cascade = c.cascade and rev and eps > 0 and not ATTACKS[name].whole
                main[(norm, eps, name, r.key.split("|")[-1])] = r.key
                rows.append(r)
    for eps in c.eps_sweep:
        for name in c.eps_sweep_attacks:
            if missing(name) or eps == 0:  # eps 0: the clean rows
                continue
            r = attack_row(
                "eps-sweep", name, c.eps_sweep_norm, eps, c, ATTACKS[name].variants(c)[0], c.eps_sweep_n, setting=None
            )
            r.reuse = main.get((c.eps_sweep_norm, eps, name, r.key.split("|")[-1]))
            rows.append(r)
    norm0, eps0 = c.main
    convergence = [  # (group, attacks, the setting swept, the setting's values incl. the main one)
        (
            "steps-sweep",
            c.steps_sweep_attacks if c.attack_steps_sweep else [],
            lambda n: ATTACKS[n].steps_field,
            lambda n: {main_setting(c, n), *c.attack_steps_sweep},
        ),
        ("eot-sweep", c.eot_sweep_attacks if c.eot_sweep else [], lambda n: "eot", lambda n: {c.eot, *c.eot_sweep}),
    ]
    for group, names, field_of, values_of in convergence:
        for name in names:
            if missing(name):
                continue
            for v in sorted(values_of(name)):
                cv = dataclasses.replace(c, **{field_of(name): v})
                r = attack_row(
                    group,
                    name,
                    norm0,
                    eps0,
                    cv,
                    ATTACKS[name].variants(c)[0],
                    c.steps_sweep_n,
                    seed_key=key(group, name),
                    setting=v,
                )
                r.reuse = main.get((norm0, eps0, name, r.key.split("|")[-1]))
                r.cascade = c.cascade and rev and not ATTACKS[name].whole  # on the main rows' survivors
                rows.append(r)
    if reversal_sweep:
        for k in c.reversal_steps_sweep:
            rows.append(
                Row(
                    key("rev-sweep", k, "clean"),
                    "rev-sweep",
                    "clean",
                    columns=("with",),
                    subset=c.steps_sweep_n,
                    reversal_steps=k,
                    label="clean",
                    setting=k,
                    reuse="clean" if k == reversal_steps else None,
                )
            )
            for name in c.reversal_sweep_attacks:
                if missing(name):
                    continue
                r = attack_row("rev-sweep", name, norm0, eps0, c, {}, c.steps_sweep_n, reversal_steps=k, setting=k)
                r.key, r.columns = key("rev-sweep", k, norm0, eps0, ATTACKS[name].ident(c, {})), ("with",)
                if name == "pgd":  # crafted once on the classifier: seeded as the main PGD row
                    r.seed_key = key("main", norm0, eps0, ATTACKS["pgd"].ident(c, {}))
                    r.reuse = r.seed_key if k == reversal_steps else None
                rows.append(r)
    if c.sanity_checks and c.standard_model:
        cs = dataclasses.replace(c, steps=20)
        r = attack_row("sanity", "pgd", "Linf", 8 / 255, cs, {}, c.steps_sweep_n)
        r.columns = ("without",)
        rows.append(r)
    for r in rows:
        r.stop_draws = c.cascade and rev and "with" in r.columns
    return rows


__all__ = ["Row", "key", "build_catalog"]
