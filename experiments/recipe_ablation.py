"""The package's reversal against Mao et al.'s recipe (``mao2021``), and one setting of the recipe at a time.

On the first ``--n`` test images: PGD (``--attack-steps`` steps of eps/4 at ``--eps`` L-inf) on the classifier
alone, then each reversal in batches of ``--batch``, ``--draws`` draws. Every line, clean and attacked: the mean
over the draws and correct on every draw, each with n and a 95% Wilson interval. ``--ablate`` adds the recipe
with one setting switched to the package's value (shared views, jitter, random start, first positive, budget).

    python experiments/recipe_ablation.py --ckpt CKPT [--data-dir data] [--n 128] [--ablate]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from lightning_modules.attacks.core import pgd
from lightning_modules.defense.reversal import reverse
from lightning_modules.evaluation.stats import wilson
from lightning_modules.settings import RECIPES, ReversalConfig

#: One setting of the recipe switched back to the package's value (the budget: the package's fixed 16/255).
ABLATIONS = {
    "shared_views": dict(shared_views=False),
    "jitter": dict(jitter=RECIPES["package"]["jitter"], p_jitter=RECIPES["package"]["p_jitter"]),
    "random_start": dict(random_start=False),
    "positive": dict(positive="all"),
    "budget": dict(budget_factor=0.0),
}


def cell(correct: torch.Tensor) -> str:
    """``54.7% [46.1, 63.0] n=128`` for a boolean vector."""
    k, n = int(correct.sum()), correct.numel()
    lo, hi = wilson(k, n)
    return f"{100 * k / max(n, 1):.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] n={n}"


def load(ckpt: str):
    from lightning_modules import ReversalModule

    ck = torch.load(ckpt, map_location="cpu", weights_only=True)
    hp = {k: v for k, v in ck["hyper_parameters"].items() if not k.startswith("_")}
    m = ReversalModule(**{**hp, "speed": {**(hp.get("speed") or {}), "compile": False}})
    m.load_state_dict(ck["state_dict"])
    return m.eval()


def first_test_images(data_dir: str, n: int, strict: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    from datamodules import CIFAR10DataModule

    dm = CIFAR10DataModule(data_dir=data_dir, n_examples=n, strict_counts=strict)
    dm.setup("test")
    x, y = dm.splits["test"]
    return (x.float() / 255 if x.dtype == torch.uint8 else x.float()), y


def predict(m, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return m.classifier(x)[0].argmax(1)


def reversed_correct(m, x, y, cfg: ReversalConfig, batch: int, draws: int, seed: int) -> torch.Tensor:
    """``(draws, n)`` correctness after the reversal, each draw seeded apart, in batches of ``batch``."""
    out = []
    for d in range(draws):
        torch.manual_seed(seed + 1000 * d)
        xr = [reverse(m.classifier, m.head, xb, cfg, temperature=m.ssl_cfg.temperature) for xb in x.split(batch)]
        out.append(predict(m, torch.cat(xr)) == y)
    return torch.stack(out)


def line(name: str, clean: torch.Tensor, attacked: torch.Tensor) -> dict:
    """The cells of one reversal: per draw pooled (mean over draws) and correct on every draw."""
    r = {"reversal": name}
    for k, v in (("clean", clean), ("attacked", attacked)):
        r.update({f"{k}_mean": cell(v.flatten()), f"{k}_all_draws": cell(v.all(0))})
    print(json.dumps(r), flush=True)
    return r


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--eps", type=float, default=8 / 255)
    ap.add_argument("--attack-steps", type=int, default=20)
    ap.add_argument("--reversal-steps", type=int, default=None, help="override both recipes' steps")
    ap.add_argument("--views", choices=["kornia", "fast"], default=None, help="override the views' backend")
    ap.add_argument("--ablate", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--not-strict", action="store_true", help="accept a test split of another size (tests)")
    a = ap.parse_args(argv)
    m = load(a.ckpt)
    x, y = first_test_images(a.data_dir, a.n, strict=not a.not_strict)
    torch.manual_seed(a.seed)
    batches = zip(x.split(a.batch), y.split(a.batch))
    x_adv = torch.cat([pgd(m.classifier, xb, yb, a.eps, a.eps / 4, a.attack_steps) for xb, yb in batches])
    base = {"without": None}
    over = {} if a.reversal_steps is None else {"steps": a.reversal_steps}
    over.update({} if a.views is None else {"views": a.views})
    base["package"] = m.reversal_cfg.override(**over)  # the checkpoint's reversal (the package's recipe)
    base["mao2021"] = m.reversal_cfg.override(recipe="mao2021", **over)
    if a.ablate:
        for k, v in ABLATIONS.items():
            base[f"mao2021 without {k}"] = m.reversal_cfg.override(recipe="mao2021", **over, **v)
    rows = []
    for name, cfg in base.items():
        t0 = time.perf_counter()
        if cfg is None:
            c, r = (predict(m, x) == y)[None], (predict(m, x_adv) == y)[None]
        else:
            cfg = cfg.for_threat("Linf", a.eps)
            c = reversed_correct(m, x, y, cfg, a.batch, a.draws, a.seed + 1)
            r = reversed_correct(m, x_adv, y, cfg, a.batch, a.draws, a.seed + 2)
        rows.append({**line(name, c, r), "seconds": round(time.perf_counter() - t0, 1)})
    return rows


if __name__ == "__main__":
    main()
