"""experiments/bench.py in its CPU tiny mode: every figure present, positive and consistent."""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


def _bench():
    spec = importlib.util.spec_from_file_location("bench", REPO / "experiments" / "bench.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bench = _bench()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    bench.main(
        [
            "--device",
            "cpu",
            "--tiny",
            "--views",
            "fast",
            "--seconds",
            "0.3",
            "--windows",
            "2",
            "--rev-steps",
            "4",
            "--aa-n",
            "4",
            "--ema",
            "0.99",
            "--json",
            str(out),
        ]
    )
    return json.loads(out.read_text())


def test_every_figure_is_a_positive_number_with_a_ratio(report):
    assert set(report["results"]) == {"pgd_at", "pgd_at_ssl", "fgsm_rs", "reversal", "reversal_draws", "autoattack"}
    assert report["complete"] is True  # the file is rewritten after every benchmark, False until the last
    assert report["forward_gflop_per_image"] > 0 and report["peak_tflops"] > 0
    assert "measured" in report["peak_source"]  # no datasheet figure on a CPU
    for name, r in report["results"].items():
        for key in ("images_per_s", "floor_images_per_s", "ratio_to_floor", "achieved_tflops", "flops_per_image"):
            assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0, (name, key, r[key])
        assert r["ratio_to_floor"] == pytest.approx(r["images_per_s"] / r["floor_images_per_s"])
        assert r["floor_images_per_s"] == pytest.approx(report["peak_tflops"] * 1e12 / r["flops_per_image"])


def test_flop_conventions(report):
    f = report["forward_gflop_per_image"] * 1e9
    res = report["results"]
    assert res["pgd_at"]["flops_per_image"] == pytest.approx(33 * f)  # (10 + 1) x (forward + backward)
    assert res["fgsm_rs"]["flops_per_image"] == pytest.approx(6 * f)
    assert res["reversal"]["flops_per_image"] == pytest.approx(4 * 4 * 3 * f)
    draws = res["reversal_draws"]  # per image-draw, both ways timed
    assert draws["flops_per_image"] == res["reversal"]["flops_per_image"] and draws["draws"] == 5
    assert draws["per_draw_images_per_s"] > 0 and draws["speedup"] == pytest.approx(
        draws["images_per_s"] / draws["per_draw_images_per_s"]
    )
    # executed (counted) FLOPs: the attack's backward skips weight gradients, so below the convention
    assert 20 * f < res["pgd_at"]["executed_flops_per_image"] < 33 * f


def test_training_loop_has_no_host_syncs_with_fast_views_and_device_ema(report):
    for name in ("pgd_at", "pgd_at_ssl", "fgsm_rs"):
        r = report["results"][name]
        assert r["host_syncs_in_step"] == {} and r["host_syncs_per_iteration"] == {}, name
    assert report["results"]["reversal"]["host_syncs_per_reversal_step"] == {}


def test_preact_resnet18_forward_is_the_issues_1_11_gflop():
    from lightning_modules.nn.backbones import build_backbone

    f = bench.forward_flops(build_backbone("preact_resnet18"), 32, torch.device("cpu"), False)
    assert f / 1e9 == pytest.approx(1.11, abs=0.005)


def test_window_timer_times_windows_of_equal_steps(monkeypatch):
    from experiments import bench_timing

    now = [0.0]  # a clock that advances 0.25 s per unit of work, however fast the machine is
    monkeypatch.setattr(bench_timing.time, "perf_counter", lambda: now[0])
    timer = bench_timing.WindowTimer(torch.device("cpu"), seconds=2.25, windows=3, warmup=2)
    ticks = 0
    while not timer.done:
        now[0] += 0.25
        timer.tick()
        ticks += 1
        assert ticks < 100
    assert timer.probe_s == 0.25 and timer.per_window == 3  # 2.25 s / 3 windows / 0.25 s per unit
    assert ticks == 2 + 1 + 3 * timer.per_window
    assert timer.result() == [0.75, 0.75, 0.75]


def test_progress_bar_metrics_cost_host_syncs():
    """The measured reason for ReversalModule(train_progress_bar=False)."""
    r = bench.main(
        [
            "--device",
            "cpu",
            "--tiny",
            "--views",
            "fast",
            "--benches",
            "fgsm_rs",
            "--seconds",
            "0.1",
            "--windows",
            "1",
            "--progress-bar-metrics",
        ]
    )["results"]["fgsm_rs"]
    assert sum(r["host_syncs_per_iteration"].values()) >= 3


def test_unknown_bench_is_named():
    with pytest.raises(SystemExit):
        bench.parse_args(["--benches", "pgd_at,warp"])


@pytest.mark.skipif(
    os.environ.get("SSL_REVERSAL_SLOW_TESTS") != "1",
    reason="torch.compile of a training step takes ~2 min on a 2-core CPU; set SSL_REVERSAL_SLOW_TESTS=1 to run",
)
def test_compiled_training_step_runs_on_cpu():
    r = bench.main(
        [
            "--device",
            "cpu",
            "--tiny",
            "--views",
            "fast",
            "--benches",
            "fgsm_rs",
            "--compile",
            "--seconds",
            "0.1",
            "--windows",
            "1",
        ]
    )["results"]["fgsm_rs"]
    assert r["images_per_s"] > 0
