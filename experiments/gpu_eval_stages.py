"""The evaluation stages of ``experiments/gpu_run.py`` (after training): the image grid, the TF32 check, the
robust evaluation with and without the reversal, the adaptive attack and the AutoAttack speed comparison.
Each takes the run and its budget (s), as in :mod:`experiments.gpu_stages`."""

from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING, Any

import torch

from experiments.bench_timing import synchronize
from experiments.gpu_stages import load_module, test_images

if TYPE_CHECKING:
    from experiments.gpu_run import Run


def plan_adaptive(run: Run, budget: float) -> int:
    """Images the adaptive attack reaches in ``budget``: each costs about ``apgd_steps x eot`` reversals (BPDA
    runs the reversal forward at every step) plus the draws of its two rows, at the fp32 bench's reversal rate
    (kornia views: slower than the evaluation's fast ones, so the plan errs short); 100 without a rate."""
    a = run.args
    if a.n_adaptive:
        return a.n_adaptive
    from experiments.gpu_results import bench_rate

    rate = bench_rate(run.results, "fp32", "reversal")
    if not rate:
        return 100
    per_image = a.adaptive_steps * a.adaptive_eot + 2 * a.draws
    return int(max(50, min(500, 0.7 * budget * rate / per_image)))


def adaptive(run: Run, budget: float) -> dict:
    """``--adaptive-attack`` on as many of the first test images as ``plan_adaptive`` allows."""
    a = run.args
    n = plan_adaptive(run, budget)
    out = evaluate(
        run,
        budget,
        [a.adaptive_attack],
        n,
        adaptive_n=n,
        apgd_steps=a.adaptive_steps,
        eot=a.adaptive_eot,
        judge_draws=1,
    )
    out["n_planned"] = n
    return out


def grid(run: Run, budget: float) -> dict:
    from torchvision.utils import save_image

    from callbacks.images import reversal_grid

    m = load_module(run)
    x, y = test_images(run, 8)
    x = m._prep(x)
    x_adv = m.attack(x, y)
    x_rev = m.reverse(x_adv)
    save_image(reversal_grid(x, x_adv, x_rev), run.args.out / "grid.png")
    return {"file": "grid.png", "rows": "clean, PGD-20 8/255, reversed, |attack|, |reversal| (rescaled)"}


def tf32_check(run: Run, budget: float, n: int = 250) -> dict:
    """PGD-20 (8/255) on the first ``n`` test images with the convolutions in TF32 (cuDNN's default on a GPU, what
    the "fp32" attacks of the run use) and in strict fp32, from the same random start: robust accuracy of each
    and the images where the verdicts differ (on a CPU both are fp32: a check of the check)."""
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


def evaluate(run: Run, budget: float, attacks: list[str], n: int, **cfg_kw: Any) -> dict:
    """``RobustEvaluator`` on the first ``n`` test images; stops between rows once ``budget`` is spent."""
    from lightning_modules.attacks.adaptive import ReversalFns
    from lightning_modules.evaluation import EvalConfig, EvaluationStopped, RobustEvaluator

    a = run.args
    m = load_module(run)
    cfg = EvalConfig(
        threat_models={"Linf": "8/255"},
        attacks=attacks,
        draws=a.draws,
        composition=[],
        steps=20,
        eps_sweep=[],
        attack_steps_sweep=[],
        eot_sweep=[],
        reversal_steps_sweep=[],
        standard_model=False,
        **cfg_kw,
    )
    end = time.monotonic() + budget
    fns = ReversalFns.from_module(m, **({"steps": a.reversal_steps} if a.reversal_steps else {}))
    ev = RobustEvaluator.for_reversal(
        fns, cfg, should_stop=lambda: time.monotonic() > end, log=lambda s: print(s, flush=True)
    )
    x, y = test_images(run, n)
    stopped = False
    try:
        ev.evaluate(m._prep(x), y, a.eval_batch)
    except EvaluationStopped:
        stopped = True
        print(f"[gpu-run] evaluation stopped at its budget of {budget:.0f} s (between two rows)", flush=True)
    s = ev.summary()
    rows = [
        {
            "label": r["label"],
            "attack": r["attack"],
            "without": r["without"],
            "with": r["with"],
            "with_mean": r.get("with_mean"),
            "n": r["n"],
            "time_s": r["time_s"],
        }
        for r in s["rows"]
    ]
    return {
        "n_requested": n,
        "n_reached": s["n_examples"],
        "batch_size": a.eval_batch,
        "draws": a.draws,
        "reversal": {k: v for k, v in vars(fns.cfg).items() if k in ("steps", "n_views", "eps", "views")},
        "cut": stopped,
        "clean": {k: s["clean"].get(k) for k in ("without", "with", "with_mean", "n", "time_s")},
        "rows": rows,
        "worst_case": s["worst_case"],
        "reliable": s["reliable"],
        "sanity": [{k: c.get(k) for k in ("name", "passed", "detail")} for c in s["sanity"]],
        "config": {
            k: v
            for k, v in s["meta"]["config"].items()
            if k in ("attacks", "draws", "steps", "apgd_steps", "eot", "adaptive_n", "judge_draws")
        },
    }


def aa_speed(run: Run, budget: float) -> dict:
    """Standard AutoAttack on the first ``--n-aa`` test images, run two ways on the trained classifier: the
    package's speed settings (:class:`~lightning_modules.attacks.autoattack.AutoAttackSpeed`: one batch of all
    the images, channels-last) and pyautoattack called plainly (a contiguous fp32 copy, its default batch of
    250); the times, the robust accuracy of each and the images where their verdicts differ."""
    from lightning_modules.attacks.autoattack import STANDARD_ATTACKS, AutoAttackSpeed, autoattack, plain_autoattack
    from lightning_modules.attacks.core import frozen_params, logits_of

    a, m = run.args, load_module(run)
    if budget < 20:
        return {"cut": True, "skipped": f"{budget:.0f} s left: too little for two AutoAttack runs"}
    x, y = test_images(run, a.n_aa)
    nets = {
        "tuned": copy.deepcopy(m.classifier).to(memory_format=torch.channels_last).eval(),
        "plain": copy.deepcopy(m.classifier).to(memory_format=torch.contiguous_format).eval(),
    }
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
                logits_of(
                    net, xb.contiguous(memory_format=torch.channels_last) if name == "tuned" else xb
                ).sum().backward()
            synchronize(x.device)
            t0 = time.perf_counter()
            x_adv = calls[name]()
            synchronize(x.device)
            dt = time.perf_counter() - t0
            with torch.no_grad():
                robust[name] = (logits_of(nets["plain"], x_adv).argmax(1) == y).cpu()
        out[name] = {
            "seconds": round(dt, 2),
            "images_per_s": len(x) / dt,
            "robust_acc": robust[name].float().mean().item(),
        }
        print(
            f"[gpu-run] AutoAttack {name}: {len(x)} images in {dt:.1f} s, robust {out[name]['robust_acc']:.1%}",
            flush=True,
        )
    fp32 = "fp32" + (" (convolutions in TF32, cuDNN's default)" if tf32_convs(x.device) else "")
    out["tuned"]["settings"] = f"one batch of {len(x)}, channels-last inputs and weights, {fp32}"
    out["plain"]["settings"] = f"pyautoattack's AutoAttack, batch {a.aa_plain_batch}, NCHW {fp32}"
    out["speedup"] = out["plain"]["seconds"] / out["tuned"]["seconds"]
    out["verdicts_differ"] = int((robust["tuned"] != robust["plain"]).sum())
    return out


def tf32_convs(device: torch.device) -> bool:
    """Whether "fp32" convolutions run in TF32 here (PyTorch lets cuDNN do so by default on a GPU)."""
    return device.type == "cuda" and torch.backends.cudnn.allow_tf32
