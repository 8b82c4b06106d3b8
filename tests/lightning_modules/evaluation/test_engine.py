"""The evaluator loop: rows against a manual per-example reference, resuming, stopping between rows
with everything saved, progress lines, an undefended model, and pyautoattack's real ResNet-18."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_modules.attacks.core import pgd
from lightning_modules.evaluation import EvaluationStopped, ResultStore, RobustEvaluator, registry
from tests.lightning_modules.evaluation.flat import flat_config
from tests.lightning_modules.toy_defense import toy_data, toy_fns

QUIET = dict(composition=[], eps_sweep=[], attack_steps_sweep=[], eot_sweep=[], reversal_steps_sweep=[], progress=False)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_rows_match_a_manual_per_example_reference():
    fns = toy_fns(steps=4)
    x, y = toy_data(8)
    cfg = flat_config(threat_models={"Linf": "8/255"}, attacks=["pgd"], steps=5, draws=3, **QUIET)
    ev = RobustEvaluator(fns, cfg)
    idx = torch.arange(100, 108)
    ev.evaluate_batch(x, y, idx)
    row = next(r for r in ev.catalog() if r.attack == "pgd")
    # slow reference: same seed, then the attack, then each example classified on its own
    ev._seed(row.key, idx)
    x_adv = pgd(fns.model_fn, x, y, 8 / 255, 2 / 255, 5)
    x_rev = fns.reverse(x_adv)  # the toy's reversal is deterministic: every draw agrees
    for i in range(8):
        ok = bool(fns.model_fn(x_adv[i : i + 1]).argmax(1) == y[i])
        assert ev.store.rows[f"{row.key}|without"][100 + i] == ok
        assert ev.store.rows[f"{row.key}|with"][100 + i] == 3 * int(fns.model_fn(x_rev[i : i + 1]).argmax(1) == y[i])
    s = ev.summary()
    manual = (
        sum(ev.store.rows["clean|with"][i] == 3 and ev.store.rows[f"{row.key}|with"][i] == 3 for i in range(100, 108))
        / 8
    )
    assert s["worst_case"][0]["with"] == manual and s["worst_case"][0]["n"] == 8


def test_resume_skips_stored_rows_and_matches_a_one_shot_run(tmp_path: Path, monkeypatch):
    fns = toy_fns(steps=3)
    x, y = toy_data(12)
    cfg = flat_config(
        threat_models={"Linf": "8/255"},
        attacks=["pgd", "bpda_eot"],
        steps=3,
        eot=1,
        draws=2,
        composition=["batch2"],
        eps_sweep=["0/255", "8/255"],
        attack_steps_sweep=[1, 3],
        eot_sweep=[2],
        reversal_steps_sweep=[0, 3],
        eps_sweep_n=6,
        steps_sweep_n=6,
        progress=False,
    )
    one_shot = RobustEvaluator(fns, cfg)
    one_shot.evaluate(x, y, batch_size=6)

    meta = {"run": 1}
    first = RobustEvaluator(fns, cfg, store=ResultStore(meta))
    first.evaluate_batch(x[:6], y[:6], torch.arange(6))  # then "interrupted"
    first.store.save(tmp_path / "per_example.json")
    resumed = RobustEvaluator(fns, cfg, store=ResultStore.load(tmp_path / "per_example.json", meta))
    calls = []
    for name, a in list(registry.ATTACKS.items()):
        monkeypatch.setitem(
            registry.ATTACKS,
            name,
            a.__class__(
                **{**a.__dict__, "craft": (lambda j, _c=a.craft, _n=name: calls.append((_n, len(j.x))) or _c(j))}
            ),
        )
    resumed.evaluate_batch(x[:6], y[:6], torch.arange(6))
    assert calls == []  # everything of the first batch was stored
    resumed.evaluate_batch(x[6:], y[6:], torch.arange(6, 12))
    assert calls and all(n == 6 for _, n in calls)
    assert resumed.store.rows == one_shot.store.rows and resumed.store.draws == one_shot.store.draws


def test_stop_between_rows_keeps_every_finished_row():
    fns = toy_fns(steps=2)
    x, y = toy_data(6)
    cfg = flat_config(threat_models={"Linf": "8/255"}, attacks=["pgd", "cw", "bpda_eot"], steps=2, eot=1, **QUIET)
    saved, lines = [], []
    stop_after = 2
    ev = RobustEvaluator(
        fns,
        cfg,
        should_stop=lambda: len(saved) >= stop_after,
        on_row_done=lambda: saved.append(sorted(ev.store.rows)),
        log=lines.append,
        n_batches=3,
    )
    with pytest.raises(EvaluationStopped, match="before row 3/4 of batch 1"):
        ev.evaluate_batch(x, y, torch.arange(6))
    assert saved[-1] == [
        "clean|with",
        "clean|without",
        *sorted(f"{r.key}|{c}" for r in ev.catalog() if r.attack == "pgd" for c in r.columns),
    ]
    assert len(lines) == 2 and lines[1].startswith("[eval] batch 1/3 row 2/4 main Linf PGD-2 (CE)")
    assert "left" in lines[1]
    stop_after = 99  # resumed: the rest runs, the finished rows are not redone
    ev.evaluate_batch(x, y, torch.arange(6))
    assert {r["attack"] for r in ev.summary()["rows"]} == {"pgd", "cw", "bpda_eot"}


def test_undefended_model_has_no_reversal_columns_and_says_why():
    fns = toy_fns()
    x, y = toy_data(6)
    cfg = flat_config(threat_models={"Linf": "8/255"}, attacks=["pgd", "bpda_eot", "transfer"], steps=3, **QUIET)
    from lightning_modules.defense import DefendedModel

    s = RobustEvaluator(DefendedModel.of(fns.model_fn), cfg).evaluate(x, y)
    assert s["clean"]["with"] is None and [r["attack"] for r in s["rows"]] == ["pgd"]
    assert s["rows"][0]["with"] is None and set(s["meta"]["skipped"]) == {"bpda_eot", "transfer"}
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        RobustEvaluator(DefendedModel.of(fns.model_fn), cfg).evaluate_batch(x * 255, y, torch.arange(6))
    # a defended model without a surrogate: the transfer row is absent, with the reason
    s = RobustEvaluator(fns, cfg).evaluate(x, y)
    assert "transfer" not in {r["attack"] for r in s["rows"]}
    assert "transfer_from" in s["meta"]["skipped"]["transfer"]


def test_real_pyautoattack_resnet18_is_broken_by_pgd(real_cifar10):
    """pyautoattack's example ResNet-18 (standard training, shipped in its wheel) on 16 real CIFAR-10
    test images: accurate clean, 0% under PGD-20 at 8/255 (the standard-model check)."""
    import pyautoattack
    from pyautoattack.examples.resnet import ResNet18

    from datamodules.files import read_cifar_batches
    from lightning_modules.defense import DefendedModel

    net = ResNet18()
    weights = Path(pyautoattack.__file__).parent / "examples" / "model_test.pt"
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    net.eval().requires_grad_(False)
    xs, ys = read_cifar_batches([real_cifar10 / "cifar-10-batches-py" / "test_batch"], 10)
    x, y = torch.from_numpy(xs[:16]).float() / 255, torch.from_numpy(ys[:16]).long()
    torch.set_num_threads(2)
    cfg = flat_config(
        threat_models={"Linf": "8/255"}, attacks=["pgd"], steps=20, standard_model=True, steps_sweep_n=16, **QUIET
    )
    s = RobustEvaluator(DefendedModel.of(net), cfg).evaluate(x, y, batch_size=16)
    assert s["clean"]["without"] >= 0.8, s["clean"]
    assert s["rows"][0]["without"] == 0.0, s["rows"][0]
    assert {c["name"]: c["passed"] for c in s["sanity"]}["standard model ~0% under PGD-20 at 8/255"] is True


def test_headline_is_on_the_examples_every_attack_on_the_defense_ran_on():
    fns = toy_fns(steps=2)
    x, y = toy_data(8)
    cfg = flat_config(
        threat_models={"Linf": "8/255"},
        attacks=["pgd", "bpda_eot", "square"],
        steps=2,
        eot=1,
        adaptive_n=6,
        square_n=2,
        square_queries=3,
        judge_draws=1,
        **QUIET,
    )
    s = RobustEvaluator(fns, cfg).evaluate(x, y, batch_size=8)
    rows = {r["attack"]: r for r in s["rows"]}
    assert rows["pgd"]["n"] == 8 and rows["bpda_eot"]["n"] == 6 and rows["square"]["n"] == 2
    assert s["worst_case"][0]["n"] == 6  # not 8: the attacks on the defense ran on the first 6 only


def test_reversal_sweep_at_the_reversals_own_steps_copies_the_main_rows():
    fns = toy_fns(steps=3)
    x, y = toy_data(8)
    cfg = flat_config(
        threat_models={"Linf": "8/255"}, attacks=["pgd"], steps=3, draws=2, **{**QUIET, "reversal_steps_sweep": [1, 3]}
    )
    ev = RobustEvaluator(fns, cfg)
    ev.evaluate(x, y, batch_size=8)
    sweep = {(r.setting, r.attack): r for r in ev.catalog() if r.group == "rev-sweep"}
    assert sweep[(3, "clean")].reuse == "clean" and sweep[(1, "clean")].reuse is None
    main_pgd = next(r for r in ev.catalog() if r.group == "main" and r.attack == "pgd")
    assert sweep[(3, "pgd")].reuse == main_pgd.key and sweep[(1, "pgd")].reuse is None
    for (k, name), r in sweep.items():
        src = "clean" if name == "clean" else main_pgd.key
        same = ev.store.rows[f"{r.key}|with"] == ev.store.rows[f"{src}|with"]
        assert same or k != 3  # the copy; the 1-step row is its own
    assert ev.store.seconds.get(f"{sweep[(3, 'clean')].key}|with", 0.0) == 0.0  # not reversed again
