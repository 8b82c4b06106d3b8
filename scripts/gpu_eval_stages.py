"""The stages of ``scripts/gpu_run.py`` after training (grid, TF32 check, evaluation with and without the
reversal, adaptive attack, AutoAttack speed); each takes the run and its budget (s), as in ``gpu_stages``."""

from __future__ import annotations

import copy
import time
from typing import Any

import torch

from experiments.bench_timing import synchronize
from scripts.gpu_results import bench_rate
from scripts.run_tools import Run, load_module, test_images


def plan_adaptive(run: Run, budget: float) -> int:
    """Images the adaptive attack reaches in ``budget``, each ``apgd_steps x eot`` reversals (BPDA runs it at every
    step) plus its rows' draws, at the fp32 bench's (kornia views: slower) reversal rate; 100 without one."""
    a = run.args
    if a.n_adaptive:
        return a.n_adaptive
    rate = bench_rate(run.results, "fp32", "reversal")
    if not rate:
        return 100
    per_image = a.adaptive_steps * a.adaptive_eot + 2 * a.draws
    return int(max(50, min(500, 0.7 * budget * rate / per_image)))


def adaptive(run: Run, budget: float) -> dict:
    """``--adaptive-attack`` on as many of the first test images as ``plan_adaptive`` allows."""
    a, n = run.args, plan_adaptive(run, budget)
    kw = dict(adaptive={"adaptive_n": n}, attack={"apgd_steps": a.adaptive_steps, "eot": a.adaptive_eot})
    kw["scoring"] = {"judge_draws": 1}
    return {**evaluate(run, budget, [a.adaptive_attack], n, **kw), "n_planned": n}


def grid(run: Run, budget: float) -> dict:
    from torchvision.utils import save_image

    from callbacks.images import reversal_grid

    m = load_module(run)
    x, y = test_images(run, 8)
    x = m._prep(x)
    x_adv = m.attack(x, y)
    save_image(reversal_grid(x, x_adv, m.reverse(x_adv)), run.args.out / "grid.png")
    return {"file": "grid.png", "rows": "clean, PGD-20 8/255, reversed, |attack|, |reversal| (rescaled)"}


def tf32_check(run: Run, budget: float, n: int = 250) -> dict:
    """PGD-20 (8/255) on the first ``n`` test images, convolutions in TF32 (the GPU default the "fp32" attacks use)
    and in strict fp32, same random start: each robust accuracy and the differing verdicts (on a CPU both fp32)."""
    m = load_module(run)
    x, y = test_images(run, min(n, run.args.n_eval))
    x, out, robust = m._prep(x), {"n": len(x), "tf32_available": tf32_convs(x.device)}, {}
    before = torch.backends.cudnn.allow_tf32
    try:
        for name, allow in (("tf32", True), ("fp32", False)):
            torch.backends.cudnn.allow_tf32 = allow
            torch.manual_seed(0)
            synchronize(x.device)
            t0 = time.perf_counter()
            x_adv = m.attack(x, y, steps=20, eps=8 / 255)
            with torch.no_grad():
                robust[name] = (m.model_fn(x_adv).argmax(1) == y).cpu()
            synchronize(x.device)
            out[name] = {"robust_acc": robust[name].float().mean().item(), "seconds": time.perf_counter() - t0}
    finally:
        torch.backends.cudnn.allow_tf32 = before
    out["verdicts_differ"] = int((robust["tf32"] != robust["fp32"]).sum())
    return out


def evaluate(run: Run, budget: float, attacks: list[str], n: int, **groups: Any) -> dict:
    """``RobustEvaluator`` on the first ``n`` test images; stops between rows once ``budget`` is spent.
    ``groups``: settings of :class:`~lightning_modules.evaluation.EvalConfig`'s groups (``attack={"eot": 4}``)."""
    from lightning_modules.defense import DefendedModel
    from lightning_modules.evaluation import EvalConfig, EvaluationStopped, RobustEvaluator

    a, m = run.args, load_module(run)
    base = dict(scoring={"draws": a.draws, "composition": []}, attack={"steps": 20}, checks={"standard_model": False})
    base["sweeps"] = {k: [] for k in ("eps_sweep", "attack_steps_sweep", "eot_sweep", "reversal_steps_sweep")}
    settings = {g: {**base.get(g, {}), **groups.get(g, {})} for g in {*base, *groups}}
    cfg = EvalConfig(threat_models={"Linf": "8/255"}, attacks=attacks, **settings)
    end = time.monotonic() + budget
    steps = {"steps": a.reversal_steps} if a.reversal_steps else {}
    fns = DefendedModel.from_module(m, m.reversal_cfg.override(**steps))
    ev = RobustEvaluator(fns, cfg, should_stop=lambda: time.monotonic() > end, log=lambda s: print(s, flush=True))
    x, y = test_images(run, n)
    stopped = False
    try:
        ev.evaluate(m._prep(x), y, a.eval_batch)
    except EvaluationStopped:
        stopped = True
        print(f"[gpu-run] evaluation stopped at its budget of {budget:.0f} s (between two rows)", flush=True)
    s = ev.summary()
    row_keys = ("label", "attack", "without", "with", "with_mean", "n", "time_s")
    rows = [{k: r[k] if k != "with_mean" else r.get(k) for k in row_keys} for r in s["rows"]]
    cfg_keys = ("attacks", "draws", "steps", "apgd_steps", "eot", "adaptive_n", "judge_draws")
    conf = s["meta"]["config"]
    groups = (conf, conf["scoring"], conf["attack"], conf["adaptive"])
    out = dict(n_requested=n, n_reached=s["n_examples"], batch_size=a.eval_batch, draws=a.draws)
    out["reversal"] = {k: v for k, v in vars(fns.cfg).items() if k in ("steps", "n_views", "eps", "views")}
    out.update(cut=stopped, clean={k: s["clean"].get(k) for k in ("without", "with", "with_mean", "n", "time_s")})
    out.update(rows=rows, worst_case=s["worst_case"], reliable=s["reliable"])
    out["sanity"] = [{k: c.get(k) for k in ("name", "passed", "detail")} for c in s["sanity"]]
    out["config"] = {k: v for g in groups for k, v in g.items() if k in cfg_keys}
    return out


def aa_speed(run: Run, budget: float) -> dict:
    """Standard AutoAttack on the first ``--n-aa`` test images with the package's speed settings
    (``AutoAttackSpeed``: one batch, channels-last) and with pyautoattack called plainly (contiguous fp32, batch
    ``--aa-plain-batch``): the times, the robust accuracy of each and the images where their verdicts differ."""
    from lightning_modules.attacks.autoattack import STANDARD_ATTACKS, AutoAttackSpeed, autoattack, plain_autoattack
    from lightning_modules.attacks.core import frozen_params, logits_of

    a, m = run.args, load_module(run)
    if budget < 20:
        return {"cut": True, "skipped": f"{budget:.0f} s left: too little for two AutoAttack runs"}
    x, y = test_images(run, a.n_aa)
    formats = {"tuned": torch.channels_last, "plain": torch.contiguous_format}
    nets = {name: copy.deepcopy(m.classifier).to(memory_format=f).eval() for name, f in formats.items()}
    speed = AutoAttackSpeed(batch_size=None, channels_last=True)
    # quick (CPU checks): APGD-CE only (APGD-T, FAB-T and Square take minutes on a CPU model's robust points)
    attacks = ("apgd-ce",) if a.quick_attacks else STANDARD_ATTACKS
    kw: dict[str, Any] = {"eps": 8 / 255, "norm": "Linf", "seed": 0, "attacks": attacks}
    calls = {
        "tuned": lambda: autoattack(nets["tuned"], x, y, speed=speed, **kw),
        "plain": lambda: plain_autoattack(nets["plain"], x, y, batch_size=a.aa_plain_batch, **kw),
    }
    out: dict[str, Any] = {"n": len(x), "eps": "8/255", "norm": "Linf", "seed": 0, "attacks": list(attacks)}
    robust = {}
    end = time.monotonic() + budget
    for name, net in nets.items():  # the tuned call first: whatever warms up on the way helps the plain one
        if name == "plain" and end - time.monotonic() < 2 * out["tuned"]["seconds"]:
            out.update(cut=True, plain={"skipped": f"under 2x the tuned call's time left of the {budget:.0f} s budget"})
            return out
        with frozen_params(net):
            with torch.enable_grad():  # warm-up: cuDNN's choices and the allocator, at the call's batch
                xb = x[: a.aa_plain_batch if name == "plain" else len(x)].clone().requires_grad_(True)
                xin = xb if name == "plain" else xb.contiguous(memory_format=torch.channels_last)
                logits_of(net, xin).sum().backward()
            synchronize(x.device)
            t0 = time.perf_counter()
            x_adv = calls[name]()
            synchronize(x.device)
            dt = time.perf_counter() - t0
            with torch.no_grad():
                robust[name] = (logits_of(nets["plain"], x_adv).argmax(1) == y).cpu()
        acc = robust[name].float().mean().item()
        out[name] = {"seconds": round(dt, 2), "images_per_s": len(x) / dt, "robust_acc": acc}
        print(f"[gpu-run] AutoAttack {name}: {len(x)} images in {dt:.1f} s, robust {acc:.1%}", flush=True)
    fp32 = "fp32" + (" (convolutions in TF32, cuDNN's default)" if tf32_convs(x.device) else "")
    out["tuned"]["settings"] = f"one batch of {len(x)}, channels-last inputs and weights, {fp32}"
    out["plain"]["settings"] = f"pyautoattack's AutoAttack, batch {a.aa_plain_batch}, NCHW {fp32}"
    out["speedup"] = out["plain"]["seconds"] / out["tuned"]["seconds"]
    out["verdicts_differ"] = int((robust["tuned"] != robust["plain"]).sum())
    return out


def tf32_convs(device: torch.device) -> bool:
    """Whether "fp32" convolutions run in TF32 here (PyTorch lets cuDNN do so by default on a GPU)."""
    return device.type == "cuda" and torch.backends.cudnn.allow_tf32
