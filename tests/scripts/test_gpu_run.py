"""scripts/gpu_run.py end to end in its CPU tiny mode, the weights it returns, and gpu_results folding."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scripts import gpu_eval_stages, gpu_results, gpu_run, gpu_stages, run_tools
from scripts.shards import load_shards, module_from_shards

REPO = Path(__file__).resolve().parents[2]


# budgets no loaded machine reaches: every stage is capped by its step and image counts, never by the clock
UNREACHABLE = ["--total-seconds", "86400"] + [
    arg for stage in ("bench", "train", "eval", "adaptive", "aa") for arg in (f"--{stage}-seconds", "14400")
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """`make gpu-run DEVICE=cpu TINY=1`, as the script, into a fresh folder; budgets no machine reaches, so that
    no stage is cut however loaded the machine is (the cutting itself is tested below)."""
    root = tmp_path_factory.mktemp("gpu_run")
    out = root / "out"
    proc = subprocess.run(
        [sys.executable, "scripts/gpu_run.py", "--device", "cpu", "--tiny", "--out", str(out)]
        + ["--work", str(root / "work"), *UNREACHABLE],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.mark.timeout(0)  # the tiny run is capped by steps, not by a clock
def test_every_stage_ran_and_wrote_at_most_eight_small_files(tiny_run):
    res = json.loads((tiny_run / "results.json").read_text())
    assert set(res["stages"]) == {"setup", "bench", "train", "weights", "grid", "tf32", "eval", "adaptive", "aa_speed"}
    tf = res["tf32"]  # on a CPU both settings are fp32: the same verdicts
    assert tf["tf32_available"] is False and tf["verdicts_differ"] == 0 and tf["n"] == 16
    failed = {k: v for k, v in res["stages"].items() if v["status"] != "ok"}
    assert not failed, failed
    files = sorted(p.name for p in tiny_run.iterdir())
    assert len(files) <= 8 and all(p.stat().st_size < 16 * 2**20 for p in tiny_run.iterdir())
    assert {"results.json", "results.md", "bench.json", "run.log", "grid.png", "weights-00-of-01.pt"} <= set(files)
    assert all(c.isalnum() or c in "._-" for f in files for c in f)
    assert res["meta"]["tiny"] is True and res["meta"]["commit"]
    assert set(res["bench"]["fp32"]["results"]) >= {"pgd_at", "reversal"}
    assert res["train"]["global_step"] > 0
    ev = res["eval"]
    assert ev["n_reached"] == ev["n_requested"] == 16 and [r["attack"] for r in ev["rows"]][:1] == ["pgd"]
    assert 0 <= ev["clean"]["without"] <= 1 and ev["rows"][0]["with"] is not None  # with the reversal
    assert res["adaptive"]["rows"][0]["attack"] == "apgd_ce_bpda"
    assert res["setup"]["versions"]["torch"] == importlib.metadata.version("torch")
    assert res["setup"]["versions"]["pyautoattack"] == importlib.metadata.version("pyautoattack")
    aa = res["aa_speed"]
    assert aa["n"] == 8 and aa["speedup"] == aa["plain"]["seconds"] / aa["tuned"]["seconds"] > 0
    assert 0 <= aa["tuned"]["robust_acc"] <= 1 and 0 <= aa["verdicts_differ"] <= 8
    assert "[gpu-run] eval:" in (tiny_run / "run.log").read_text()


@pytest.mark.timeout(0)  # the tiny run is capped by steps, not by a clock
def test_shards_rebuild_the_trained_model(tiny_run):
    m = module_from_shards(tiny_run)
    sd = load_shards(tiny_run)
    assert all(v.dtype == torch.bfloat16 for v in sd.values() if v.is_floating_point())
    assert m.hparams.backbone == "small_cnn"
    for k, v in m.state_dict().items():
        assert torch.equal(v, sd[k].to(v.dtype)), k
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.timeout(0)  # the tiny run is capped by steps, not by a clock
def test_gpu_results_folds_the_run_into_the_results_block(tiny_run, tmp_path):
    doc = tmp_path / "results.md"
    doc.write_text(f"# x\n\nbefore\n{gpu_results.START}\nold\n{gpu_results.END}\nafter\n")
    gpu_results.main(["--out", str(tiny_run), "--doc", str(doc)])
    text = doc.read_text()
    res = json.loads((tiny_run / "results.json").read_text())
    assert "old" not in text and text.startswith("# x\n\nbefore\n") and text.endswith("after\n")
    block = text.split(gpu_results.START)[1].split(gpu_results.END)[0]
    assert res["meta"]["commit"] in block and res["meta"]["device_name"] in block and "tiny CPU smoke run" in block
    clean = f"{100 * res['eval']['clean']['without']:.1f}%"
    assert clean in block and res["bench"]["fp32"]["command"] in block
    gpu_results.main(["--empty", "--doc", str(doc)])
    empty = doc.read_text()
    assert res["meta"]["commit"] not in empty and empty.count(f"| {gpu_results.NOT_YET} |") == 5


def test_gpu_results_refuses_a_file_without_its_block_and_a_folder_without_results(tmp_path, monkeypatch):
    (tmp_path / "results.md").write_text("# no block\n")
    with pytest.raises(ValueError, match="gpu-results:start"):
        gpu_results.fold(tmp_path / "results.md", None)
    with pytest.raises(SystemExit):
        gpu_results.main(["--doc", str(tmp_path / "results.md")])  # neither --out nor --empty
    folded = []
    monkeypatch.setattr(gpu_results, "fold", lambda doc, res: folded.append(doc))
    gpu_results.main(["--empty"])
    assert folded == [REPO / "docs" / "results.md"]  # the block's default home
    with pytest.raises(FileNotFoundError, match="results.json"):
        gpu_results.read_results(tmp_path)


def test_missing_pack_and_wheels_are_named(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_stages, "NEEDED", gpu_stages.NEEDED)  # restored after the test
    args = gpu_run.parse_args(
        [
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "o"),
            "--work",
            str(tmp_path / "w"),
            "--pack",
            str(tmp_path / "no.npz"),
        ]
    )
    with pytest.raises(FileNotFoundError, match="no.npz.*make device-wheels"):
        gpu_stages.prepare_data(args, 10)
    run = gpu_run.Run.__new__(gpu_run.Run)
    run.args = gpu_run.parse_args(
        ["--out", str(tmp_path / "o"), "--work", str(tmp_path / "w"), "--wheels", str(tmp_path / "nowheels")]
    )
    gpu_stages.NEEDED = ("surely_not_an_installed_module",)
    with pytest.raises(FileNotFoundError, match="nowheels.*make device-wheels"):
        gpu_stages.setup(run, 10)


def test_a_stage_over_its_budget_is_cut_and_the_next_still_runs(tmp_path, monkeypatch):
    args = gpu_run.parse_args(
        [
            "--device",
            "cpu",
            "--tiny",
            "--out",
            str(tmp_path / "o"),
            "--work",
            str(tmp_path / "w"),
            "--total-seconds",
            "3600",
        ]
    )
    args.out.mkdir(parents=True)
    run = gpu_run.Run(args)

    class Clock:  # the budget runs out once the child's first line has come through, however slow the machine
        said_hi = False

        def write(self, s: str) -> int:
            self.said_hi |= s == "hi\n"
            return len(s)

        def flush(self) -> None:
            pass

        def monotonic(self) -> float:
            return 1e9 if self.said_hi else 0.0

    clock = Clock()
    monkeypatch.setattr(run_tools.sys, "stdout", clock)
    monkeypatch.setattr(run_tools.time, "monotonic", clock.monotonic)
    rc, text, cut = run_tools.run_logged(
        [sys.executable, "-c", "import time; print('hi', flush=True); time.sleep(3600)"], 2
    )
    monkeypatch.undo()
    assert cut and rc != 0 and text == "hi\n"
    run.stage("slow", 1, lambda b: {"cut": True})
    run.stage("broken", 1, lambda b: 1 / 0)
    run.stage("late", 100, lambda b: {"budget": b}, reserve=20)
    run.stage("never", 5, lambda b: None, reserve=10**6)
    st = json.loads((args.out / "results.json").read_text())["stages"]
    assert (
        st["slow"]["status"] == "cut" and st["broken"]["status"] == "failed" and "ZeroDivision" in st["broken"]["error"]
    )
    assert st["late"]["status"] == "ok" and st["never"]["status"] == "skipped"
    assert (args.out / "results.md").is_file()


def test_the_adaptive_attack_is_sized_from_the_bench(tmp_path):
    run = gpu_run.Run(gpu_run.parse_args(["--out", str(tmp_path / "o"), "--work", str(tmp_path / "w")]))
    assert run.args.adaptive_steps * run.args.adaptive_eot + 2 * run.args.draws == 86
    assert gpu_eval_stages.plan_adaptive(run, 40) == 100  # no bench: the default
    for rate, n in ((1000.0, int(0.7 * 40 * 1000 / 86)), (10.0, 50), (1e6, 500)):
        run.results["bench"] = {"fp32": {"results": {"reversal": {"images_per_s": rate}}}}
        assert gpu_eval_stages.plan_adaptive(run, 40) == n
    run.args.n_adaptive = 7  # given: used as is
    assert gpu_eval_stages.plan_adaptive(run, 40) == 7


def test_a_cut_bench_keeps_the_benchmarks_it_finished(tmp_path, monkeypatch):
    """bench.py rewrites its JSON after every benchmark; killed at the budget, the stage keeps those and the
    epoch plan falls back from the joint recipe's rate to PGD-10 AT's."""
    run = gpu_run.Run(gpu_run.parse_args(["--out", str(tmp_path / "o"), "--work", str(tmp_path / "w")]))
    run.args.out.mkdir(parents=True)

    def killed_after_one_bench(cmd, timeout, env=None):
        partial = {"device_name": "X", "complete": False, "results": {"pgd_at": {"images_per_s": 6500.0}}}
        (run.args.work / "bench-tuned.json").write_text(json.dumps(partial))  # fp32 never started
        return -9, "[bench] 1/4 pgd_at: 6500.0 images/s (9.0 s), about 30 s left\n", True

    monkeypatch.setattr(gpu_stages, "run_logged", killed_after_one_bench)
    run.args.work.mkdir(parents=True)
    out = gpu_stages.bench(run, 80)
    assert out["cut"] and out["tuned"]["results"] == {"pgd_at": {"images_per_s": 6500.0, "ratio_to_floor": None}}
    assert out["tuned"]["complete"] is False and out["fp32"]["results"] == {}
    run.results["bench"] = out
    assert gpu_stages.plan_epochs(run, 270) == int((270 - 45) * 0.9 * 6500 * 11 / 13 / 50000)


# the sizes of the real run, shrunk: one epoch of 4 steps, 8 images evaluated; every budget but the bench's
# unreachable (the bench is cut at 5 s on purpose: its cut is part of the path under test)
FULL_SIZE_ON_CPU = [
    "--device", "cpu", *UNREACHABLE, "--bench-seconds", "5", "--n-eval", "8",
    "--eval-batch", "4", "--n-adaptive", "4", "--adaptive-steps", "2", "--adaptive-eot", "1", "--n-aa", "4",
    "--aa-plain-batch", "2", "--reversal-steps", "2", "--epochs", "1", "--quick-attacks", "--train-args",
    "--data.init_args.batch_size 8 --trainer.limit_train_batches 4 --model.init_args.attack.steps 1 "
    "--data.init_args.n_examples 8 --data.init_args.eval_batch_size 8 --trainer.check_val_every_n_epoch 1",
]  # fmt: skip

FULL_SIZE = os.environ.get("SSL_FULL_SIZE") == "1"


@pytest.mark.skipif(not FULL_SIZE, reason="opt-in, about 8 min of PreActResNet-18 on 2 cores: SSL_FULL_SIZE=1")
@pytest.mark.timeout(0)  # capped by steps; how long it takes depends on the machine only
def test_full_size_pipeline_runs_on_the_cpu(real_cifar10, tmp_path):
    """Not --tiny: PreActResNet-18, the fast recipe (bf16-mixed, channels-last, fast views, EMA), the real pack,
    the bench cut at its budget: every path of the GPU run but CUDA and standard AutoAttack (quick attacks here:
    on a model with robust points standard AutoAttack runs for many minutes on a CPU; its wrappers are tested
    in tests/lightning_modules/attacks/test_autoattack.py)."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "scripts/gpu_run.py", "--out", str(out), "--work", str(tmp_path / "work")]
        + ["--data-dir", str(real_cifar10), *FULL_SIZE_ON_CPU],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    st = {k: v["status"] for k, v in res["stages"].items()}
    assert st == {**{k: "ok" for k in st}, "bench": "cut"}, st
    assert res["bench"]["tuned"]["results"] == {}  # nothing finished in 5 s: kept empty, not an error
    assert res["train"]["global_step"] == 4 and "bf16-mixed" not in res["train"]["command"]  # the recipe's own
    assert [r["attack"] for r in res["eval"]["rows"]] == ["pgd", "apgd-ce"] and res["eval"]["n_reached"] == 8
    assert res["aa_speed"]["attacks"] == ["apgd-ce"] and res["aa_speed"]["plain"]["seconds"] > 0
    assert len(list(out.glob("weights-*.pt"))) == 2 and len(list(out.iterdir())) <= 8
    block = gpu_results.render(res)
    assert "full-size pipeline on the CPU" in block and "Full run" not in block
