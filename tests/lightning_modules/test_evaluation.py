"""The evaluation engine: per-example rows against a manual reference, worst case, resuming,
sweeps, sanity checks, and the real pyautoattack ResNet-18 under PGD."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lightning_modules.attacks import pgd
from lightning_modules.evaluation import EvalConfig, ResultStore, RobustEvaluator, eps_label, parse_eps
from tests.lightning_modules.toy_defense import toy_data, toy_fns

NO_SWEEPS = dict(eps_sweep=[], attack_steps_sweep=[], reversal_steps_sweep=[])


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only add overhead


def test_config_parses_budgets_and_rejects_bad_settings():
    cfg = EvalConfig(threat_models={"Linf": "8/255", "L2": "0.5"}, eps_sweep=["4/255", 0, "4/255"])
    assert cfg.threat_models == {"Linf": 8 / 255, "L2": 0.5} and cfg.eps_sweep == [0.0, 4 / 255]
    assert parse_eps("16/255") == 16 / 255 and eps_label(8 / 255) == "8/255" and eps_label(0.5, "L2") == "0.5"
    with pytest.raises(ValueError, match="larger than the whole"):
        EvalConfig(threat_models={"Linf": 8})
    with pytest.raises(ValueError, match="unknown attacks \\['pgdd'\\]"):
        EvalConfig(attacks=["pgdd"])
    with pytest.raises(ValueError, match="unknown adaptive"):
        EvalConfig(adaptive=["bpda"])
    with pytest.raises(ValueError, match="'L3'"):
        EvalConfig(threat_models={"L3": 0.5})
    with pytest.raises(ValueError, match="steps must be >= 1"):
        EvalConfig(steps=0)


def test_result_store_roundtrip_merge_and_refusals(tmp_path: Path):
    a = ResultStore({"weights_sha1": "abc"})
    a.add("clean|without", torch.tensor([0, 1, 2]), torch.tensor([True, False, True]), seconds=1.5)
    b = ResultStore({"weights_sha1": "abc"})
    b.add("clean|without", [3], [True])
    b.add("pgd|without", [0, 1, 2, 3], [False, False, True, True])
    a.merge(b)
    assert a.has("clean|without", [0, 1, 2, 3]) and not a.has("clean|without", [4])
    assert a.accuracy(["clean|without"]) == (0.75, 4)
    assert a.accuracy(["clean|without", "pgd|without"]) == (0.5, 4)  # per-example AND
    path = tmp_path / "s.json"
    a.save(path)
    assert not list(tmp_path.glob(".*tmp*"))
    c = ResultStore.load(path, {"weights_sha1": "abc"})
    assert c.rows == a.rows and c.seconds == a.seconds
    with pytest.raises(ValueError, match=r"s\.json holds results of a different evaluation \(differs in \['weights_sha1'\]"):
        ResultStore.load(path, {"weights_sha1": "other"})
    with pytest.raises(ValueError, match="different evaluations"):
        a.merge(ResultStore({"weights_sha1": "other"}))
    path.write_text("{not json")
    with pytest.raises(ValueError, match="s.json is not valid JSON"):
        ResultStore.load(path)
    path.write_text(json.dumps({"rows": {"k": {"idx": [1]}}}))
    with pytest.raises(ValueError, match="row 'k' is malformed"):
        ResultStore.load(path)


def test_rows_match_a_manual_per_example_reference():
    fns = toy_fns(steps=4)
    x, y = toy_data(8)
    cfg = EvalConfig(threat_models={"Linf": "8/255"}, attacks=["pgd"], adaptive=[], steps=5, **NO_SWEEPS)
    ev = RobustEvaluator.for_reversal(fns, cfg)
    idx = torch.arange(100, 108)
    ev.evaluate_batch(x, y, idx)
    key = ev.key("Linf", 8 / 255, ev.attack_id("pgd"))
    # slow reference: same seed, then the attack, then each example classified on its own
    ev._seed(key, idx)
    x_adv = pgd(fns.model_fn, x, y, 8 / 255, 2 / 255, 5)
    for i in range(8):
        ok = bool(fns.model_fn(x_adv[i: i + 1]).argmax(1) == y[i])
        assert ev.store.rows[f"{key}|without"][100 + i] == ok
    assert all(ev.store.rows["clean|without"][100 + i] for i in range(8))
    x_rev = fns.reverse(x_adv)  # the toy's reversal is deterministic
    ref_with = (fns.model_fn(x_rev).argmax(1) == y).tolist()
    assert [ev.store.rows[f"{key}|with"][100 + i] for i in range(8)] == ref_with
    worst = ev.summary()["worst_case"][0]
    manual = sum(ev.store.rows["clean|with"][i] and ev.store.rows[f"{key}|with"][i] for i in range(100, 108)) / 8
    assert worst["with"] == manual and worst["n"] == 8


@pytest.mark.parametrize("norm,eps", [("Linf", 8 / 255), ("L2", 0.5)])
def test_each_attack_reduces_accuracy_and_stays_within_eps(norm, eps):
    fns = toy_fns(steps=4)
    x, y = toy_data(8, seed=1)
    cfg = EvalConfig(threat_models={norm: eps}, steps=5, apgd_steps=10, adaptive_steps=5, eot_samples=1,
                     **NO_SWEEPS)
    ev = RobustEvaluator.for_reversal(fns, cfg)
    clean = (fns.model_fn(x).argmax(1) == y).float().mean()
    assert clean == 1.0
    for attack in ("pgd", "cw", "apgd-ce", "autoattack", "defense_aware", "bpda_eot", "full_gradient", "transfer"):
        x_adv = ev.craft(attack, x, y, norm, eps, seed=0)
        d = (x_adv - x).flatten(1)
        size = d.abs().amax(1) if norm == "Linf" else d.norm(dim=1)
        assert size.max() <= eps + 1e-5 and 0 <= x_adv.min() and x_adv.max() <= 1, attack
        acc = (fns.model_fn(x_adv).argmax(1) == y).float().mean()
        # every attack lowers the classifier's accuracy; the defense-aware one trades some of that
        # for a low contrastive loss, the others break (nearly) everything on this fragile model
        assert acc < clean - (0.2 if attack == "defense_aware" else 0.7), (attack, acc)


def test_resume_skips_stored_rows_and_matches_a_one_shot_run(tmp_path: Path):
    fns = toy_fns(steps=3)
    x, y = toy_data(12)
    cfg = EvalConfig(threat_models={"Linf": "8/255"}, attacks=["pgd"], adaptive=["bpda_eot"], steps=3, eot_samples=1,
                     eps_sweep=["0/255", "8/255"], attack_steps_sweep=[1, 3], reversal_steps_sweep=[0, 3],
                     eps_sweep_n=6, steps_sweep_n=6)
    one_shot = RobustEvaluator.for_reversal(fns, cfg)
    one_shot.evaluate_batch(x[:6], y[:6], torch.arange(6))
    one_shot.evaluate_batch(x[6:], y[6:], torch.arange(6, 12))

    first = RobustEvaluator.for_reversal(fns, cfg, store=ResultStore({"run": 1}))
    first.evaluate_batch(x[:6], y[:6], torch.arange(6))  # then "interrupted"
    first.store.save(tmp_path / "per_example.json")
    resumed = RobustEvaluator.for_reversal(fns, cfg, store=ResultStore.load(tmp_path / "per_example.json", {"run": 1}))
    calls = []
    craft = resumed.craft
    resumed.craft = lambda *a, **k: calls.append((a[0], len(a[1]))) or craft(*a, **k)
    resumed.evaluate_batch(x[:6], y[:6], torch.arange(6))
    assert calls == []  # everything of the first batch was stored
    resumed.evaluate_batch(x[6:], y[6:], torch.arange(6, 12))
    assert calls and all(n == 6 for _, n in calls)
    assert resumed.store.rows == one_shot.store.rows


def test_sweeps_and_sanity_checks_on_the_toy():
    fns = toy_fns()
    x, y = toy_data(16, seed=2)
    cfg = EvalConfig(threat_models={"Linf": "8/255"}, attacks=["pgd"], adaptive=["defense_aware", "transfer"],
                     steps=10, eps_sweep=["0/255", "8/255", "64/255"], eps_sweep_attacks=["pgd", "defense_aware"],
                     attack_steps_sweep=[2, 10], steps_sweep_attacks=["pgd"], reversal_steps_sweep=[0, 12],
                     eps_sweep_n=16, steps_sweep_n=16, standard_model=True)
    s = RobustEvaluator.for_reversal(fns, cfg).evaluate(x, y, batch_size=16)
    eps_rows = {(r["attack"], r["eps_label"]): r for r in s["sweeps"]["eps"]}
    for a in ("pgd", "defense_aware"):
        assert eps_rows[(a, "0")]["without"] == s["clean"]["without"] and eps_rows[(a, "0")]["with"] == s["clean"]["with"]
    main = next(r for r in s["rows"] if r["attack"] == "pgd")
    assert eps_rows[("pgd", "8/255")]["with"] == main["with"]  # reused from the main table
    assert eps_rows[("pgd", "64/255")]["without"] == 0.0
    rev = {(r["attack"], r["reversal_steps"]): r["with"] for r in s["sweeps"]["reversal_steps"]}
    assert rev[("clean", 0)] == s["clean"]["without"] and rev[("pgd", 0)] == main["without"]  # 0 steps: identity
    assert rev[("pgd", 12)] == main["with"]
    assert [r["steps"] for r in s["sweeps"]["attack_steps"]] == [2, 10]
    checks = {c["name"]: c["passed"] for c in s["sanity"]}
    assert checks["eps->large: pgd without reversal at Linf 64/255 ~ 0"] is True
    assert checks["standard model ~0% under PGD-20 at 8/255"] is True
    assert checks["more pgd steps never raise accuracy (without reversal)"] is True
    assert checks["Linf 8/255: transfer >= white-box (with reversal)"] is True
    assert checks["Linf 8/255: adaptive attacks at least as strong as non-adaptive (with reversal)"] is True
    assert "eps->large: defense_aware with reversal at Linf 64/255 ~ 0" in checks


def _fill(ev: RobustEvaluator, base: str, without: list[int], with_: list[int] | None = None) -> None:
    idx = list(range(len(without)))
    ev.store.add(f"{base}|without", idx, [bool(v) for v in without])
    if with_ is not None:
        ev.store.add(f"{base}|with", idx, [bool(v) for v in with_])


def test_sanity_checks_flag_failures():
    """Results that break each rule make its check fail (hand-made per-example results)."""
    cfg = EvalConfig(threat_models={"Linf": "8/255"}, attacks=["pgd"], adaptive=["bpda_eot", "transfer"],
                     eps_sweep=["0/255", "64/255"], eps_sweep_attacks=["pgd"], attack_steps_sweep=[5, 50],
                     steps_sweep_attacks=["pgd"], reversal_steps_sweep=[], standard_model=True, noise_tolerance=0.05)
    ev = RobustEvaluator(lambda x: x, lambda x: x, lambda x: x.sum((1, 2, 3)), cfg, reverse_diff_fn=lambda *a: a[0])
    n = 20
    ones, zeros, half = [1] * n, [0] * n, [1] * 10 + [0] * 10
    _fill(ev, "clean", ones, ones)
    k = lambda a, **kw: ev.key("Linf", 8 / 255, ev.attack_id(a, **kw))  # noqa: E731
    _fill(ev, k("pgd"), zeros, ones)           # reversal undoes PGD...
    _fill(ev, k("bpda_eot"), half, ones)       # ...and the adaptive attack is weaker: flagged
    _fill(ev, k("transfer"), zeros, half)      # transfer stronger than white-box: flagged
    _fill(ev, ev.key("eps-sweep", "Linf", 64 / 255, ev.attack_id("pgd")), half, half)  # not ~0: flagged
    _fill(ev, ev.key("steps-sweep", "Linf", 8 / 255, ev.attack_id("pgd", steps=5)), zeros, zeros)
    _fill(ev, ev.key("steps-sweep", "Linf", 8 / 255, ev.attack_id("pgd", steps=50)), half, half)  # more steps help
    _fill(ev, ev.key("sanity", "Linf", 8 / 255, ev.attack_id("pgd", steps=20)), half)  # standard model not broken
    checks = {c["name"]: c["passed"] for c in ev.summary()["sanity"]}
    assert checks == {
        "eps->large: pgd without reversal at Linf 64/255 ~ 0": False,
        "standard model ~0% under PGD-20 at 8/255": False,
        "Linf 8/255: transfer >= white-box (with reversal)": False,
        "Linf 8/255: transfer >= white-box PGD (without reversal)": True,
        "Linf 8/255: adaptive attacks at least as strong as non-adaptive (with reversal)": True,
        "more pgd steps never raise accuracy (without reversal)": False,
    }
    # adaptive weaker than non-adaptive: flagged
    _fill(ev, k("pgd"), zeros, half)
    ev.store.add(f"{k('bpda_eot')}|with", list(range(n)), [True] * n)
    checks = {c["name"]: c["passed"] for c in ev.summary()["sanity"]}
    assert checks["Linf 8/255: adaptive attacks at least as strong as non-adaptive (with reversal)"] is False


def test_undefended_model_has_no_reversal_columns():
    fns = toy_fns()
    x, y = toy_data(6)
    cfg = EvalConfig(threat_models={"Linf": "8/255"}, attacks=["pgd"], steps=3, **NO_SWEEPS)
    ev = RobustEvaluator(fns.model_fn, cfg=cfg)
    s = ev.evaluate(x, y)
    assert s["clean"]["with"] is None and [r["attack"] for r in s["rows"]] == ["pgd"]
    assert s["rows"][0]["with"] is None and set(s["meta"]["skipped"]) >= {"bpda_eot", "full_gradient"}
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ev.evaluate_batch(x * 255, y, torch.arange(6))


def test_real_pyautoattack_resnet18_is_broken_by_pgd(real_cifar10):
    """pyautoattack's example ResNet-18 (standard training, shipped in its wheel) on 16 real CIFAR-10
    test images (ResNet-18 on 2 CPU cores: ~1 s a PGD step): accurate clean, 0% under PGD-20 at
    8/255 (the engine's standard-model check)."""
    import pyautoattack
    from pyautoattack.examples.resnet import ResNet18

    from datamodules.files import read_cifar_batches

    net = ResNet18()
    weights = Path(pyautoattack.__file__).parent / "examples" / "model_test.pt"
    sd = torch.load(weights, map_location="cpu", weights_only=True)
    net.load_state_dict(sd)
    net.eval().requires_grad_(False)
    xs, ys = read_cifar_batches([real_cifar10 / "cifar-10-batches-py" / "test_batch"], 10)
    x, y = torch.from_numpy(xs[:16]).float() / 255, torch.from_numpy(ys[:16]).long()
    torch.set_num_threads(2)
    cfg = EvalConfig(threat_models={"Linf": "8/255"}, attacks=["pgd"], adaptive=[], steps=20, standard_model=True,
                     eps_sweep=[], attack_steps_sweep=[], reversal_steps_sweep=[], steps_sweep_n=16)
    s = RobustEvaluator(net, cfg=cfg).evaluate(x, y, batch_size=16)
    assert s["clean"]["without"] >= 0.8, s["clean"]
    assert s["rows"][0]["without"] == 0.0, s["rows"][0]
    assert {c["name"]: c["passed"] for c in s["sanity"]}["standard model ~0% under PGD-20 at 8/255"] is True
