"""EvalConfig's parsing and refusals, and the per-example store: draws,
round trip, merge, and the refusal of stores from another evaluation or without metadata."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lightning_modules.evaluation import ATTACKS, EvalConfig, ResultStore, eps_label, parse_eps
from lightning_modules.evaluation.eval_settings import SweepSettings
from lightning_modules.evaluation.registry import validate


def test_config_parses_budgets_and_names_bad_settings():
    cfg = EvalConfig(threat_models={"Linf": "8/255", "L2": "0.5"}, sweeps={"eps_sweep": ["4/255", 0, "4/255"]})
    assert cfg.threat_models == {"Linf": 8 / 255, "L2": 0.5} and cfg.sweeps.eps_sweep == [0.0, 4 / 255]
    assert isinstance(cfg.sweeps, SweepSettings) and cfg.replace("attack.eot", 4).attack.eot == 4
    assert validate(EvalConfig()).attacks == [n for n, a in ATTACKS.items() if a.default]
    assert parse_eps("16/255") == 16 / 255 and eps_label(8 / 255) == "8/255" and eps_label(0.5, "L2") == "0.5"
    with pytest.raises(ValueError, match="larger than the whole"):
        EvalConfig(threat_models={"Linf": 8})
    with pytest.raises(ValueError, match=r"unknown attacks \['apgd_ce_bpd'\].*did you mean 'apgd_ce_bpda'"):
        validate(EvalConfig(attacks=["apgd_ce_bpd"]))
    with pytest.raises(ValueError, match="'L3'"):
        EvalConfig(threat_models={"L3": 0.5})
    with pytest.raises(ValueError, match="scoring.draws must be >= 1"):
        EvalConfig(scoring={"draws": 0})
    with pytest.raises(ValueError, match="sweeps.eps_sweep_n must be >= 1"):
        EvalConfig(sweeps=SweepSettings(eps_sweep_n=0))
    with pytest.raises(ValueError, match="unknown scoring.composition 'batch1'"):
        EvalConfig(scoring={"composition": ["batch1"]})
    with pytest.raises(ValueError, match="sweeps.eot_sweep_attacks"):
        validate(EvalConfig(sweeps={"eot_sweep_attacks": ["pgd"]}))  # PGD on the classifier has no EOT
    with pytest.raises(ValueError, match="scoring.composition_attacks"):
        validate(EvalConfig(attacks=["pgd"], scoring={"composition_attacks": ["cw"]}))
    with pytest.raises(ValueError, match="cannot read the budget '8//255'"):
        parse_eps("8//255")


def test_store_counts_draws_round_trips_and_merges(tmp_path: Path):
    a = ResultStore({"weights_sha1": "abc", "evaluation": {"draws": 5}})
    a.add("clean|without", torch.tensor([0, 1, 2]), torch.tensor([True, False, True]), seconds=1.5)
    a.add("clean|with", [0, 1, 2], [5, 4, 0], draws=5)
    assert a.accuracy(["clean|with"]) == (1 / 3, 3)  # only example 0 is correct on every draw
    assert a.draw_stats("clean|with") == {"mean": 9 / 15, "disagreement": 1 / 3}
    assert a.accuracy(["clean|without", "clean|with"]) == (1 / 3, 3)
    b = ResultStore(a.meta)
    b.add("clean|with", [3], [5], draws=5)
    a.merge(b)
    assert a.has("clean|with", [0, 1, 2, 3]) and a.accuracy(["clean|with"]) == (0.5, 4)
    path = tmp_path / "s.json"
    a.save(path)
    c = ResultStore.load(path, a.meta)
    assert c.rows == a.rows and c.draws == a.draws and c.seconds == a.seconds
    with pytest.raises(ValueError, match="stored with 5 draws, not 3"):
        a.add("clean|with", [9], [1], draws=3)
    with pytest.raises(ValueError, match=r"must lie in \[0, 5\]"):
        a.add("x|with", [9], [6], draws=5)


def test_store_refuses_other_evaluations_naming_the_keys(tmp_path: Path):
    meta = {"weights_sha1": "abc", "data": {"eval_batch_size": 64, "n_examples": 1000}, "world_size": 1}
    s = ResultStore(meta)
    s.add("clean|without", [0], [1])
    path = tmp_path / "per_example.json"
    s.save(path)
    other = json.loads(json.dumps(meta))
    other["data"]["eval_batch_size"], other["world_size"] = 16, 2
    with pytest.raises(
        ValueError,
        match=r"per_example\.json holds results of a different evaluation "
        r"\(differs in \['data\.eval_batch_size', 'world_size'\]\)",
    ):
        ResultStore.load(path, other)
    with pytest.raises(ValueError, match="cannot merge"):
        ResultStore(meta).merge(ResultStore(other))
    with pytest.raises(ValueError, match="cannot merge"):  # a store without metadata merges into nothing
        ResultStore(meta).merge(ResultStore())
    ResultStore().save(path)
    with pytest.raises(ValueError, match="without metadata"):
        ResultStore.load(path, meta)
    path.write_text(json.dumps({"format": "ssl-reversal per-example results v1", "rows": {}}))
    with pytest.raises(ValueError, match="another version of the evaluation"):
        ResultStore.load(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        ResultStore.load(path)
