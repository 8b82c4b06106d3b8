"""Schedules rebuilt for a new budget at a given step, and generator states that load with weights_only."""

import io
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lightning_modules.methods.resume import get_rng_states, make_scheduler, saved_schedule_total, set_rng_states


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "multistep"])
def test_make_scheduler_advanced_equals_stepped(schedule):
    h = SimpleNamespace(schedule=schedule, lr=0.1, warmup=0.2)
    opt_a = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    sched = make_scheduler(opt_a, h, 40)
    for _ in range(17):
        opt_a.step(), sched.step()
    opt_b = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.3, momentum=0.9)  # a restored rate
    make_scheduler(opt_b, h, 40, done=17)
    assert opt_a.param_groups[0]["lr"] == pytest.approx(opt_b.param_groups[0]["lr"])


def test_onecycle_with_one_warmup_step_builds():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = make_scheduler(opt, SimpleNamespace(schedule="onecycle", lr=0.1, warmup=0.2), 5)  # 0.2 x 5 = 1 step
    for _ in range(4):
        opt.step(), sched.step()
    assert 0 < opt.param_groups[0]["lr"] < 0.1


def test_saved_schedule_total_reads_old_checkpoints():
    assert saved_schedule_total({"schedule_total_steps": 9}) == 9
    assert saved_schedule_total({"lr_schedulers": [{"total_steps": 20}]}) == 20
    assert saved_schedule_total({}) is None


def test_rng_states_round_trip_through_a_weights_only_load():
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    buf = io.BytesIO()
    torch.save(get_rng_states(), buf)
    want = torch.rand(3), np.random.rand(3), random.random()
    buf.seek(0)
    set_rng_states(torch.load(buf, weights_only=True))
    got = torch.rand(3), np.random.rand(3), random.random()
    assert torch.equal(want[0], got[0]) and np.array_equal(want[1], got[1]) and want[2] == got[2]
