"""Adversarial test sets, crafting side: attack a test set once against a source model with any of
the package's attacks and store the result in one file, for transfer evaluation (attack model A,
test model B) and reversal experiments. The file format, its checks and the DataModule that serves a
stored set are in :mod:`datamodules.adversarial` (data modules only read data).

Each file records the attack, its budget, the source model and the seed in its metadata, and
:class:`~datamodules.adversarial.AdversarialSetDataModule` refuses a file whose metadata does not
match the request, so a transfer table can never silently mix attacks or budgets.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> import torch
    >>> from lightning_modules.evaluation.adversarial_sets import make_adversarial_set
    >>> from datamodules.adversarial import load_adversarial_set
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10)).eval()
    >>> x, y = torch.rand(16, 3, 8, 8), torch.randint(0, 10, (16,))
    >>> path = Path(tempfile.mkdtemp()) / "adv.pt"
    >>> meta = make_adversarial_set(net, x, y, path, attack="fgsm", eps=8 / 255, source_model="linear-demo")
    >>> meta["attack"], meta["n"], round(meta["eps"] * 255)
    ('fgsm', 16, 8)
    >>> obj = load_adversarial_set(path, expect={"attack": "fgsm", "source_model": "linear-demo"})
    >>> bool((obj["x_adv"] - x).abs().max() <= 8 / 255 + 1e-6)
    True

Command line (a CIFAR test set against a checkpoint or a RobustBench zoo model)::

    python -m lightning_modules.evaluation.adversarial_sets --data-dir data --out results/adv/pgd.pt \
        --checkpoint CKPT [--attack pgd] [--eps 8/255] [--steps 20] [--n-examples 1000]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn

from datamodules.adversarial import FORMAT
from datamodules.cifar import CIFAR10DataModule, CIFAR100DataModule

from ..attacks import autoattack
from ..attacks.core import check_eps, fgsm_rs, logits_of, pgd, trades_attack
from ..util import atomic_torch_save, parse_eps, to_unit


def _craft(attack: str, m, x, y, eps, alpha, steps, norm, loss, restarts, seed) -> torch.Tensor:
    """One batch of ``attack`` (one of :data:`ATTACKS`) against the model ``m``."""
    if attack == "pgd":
        return pgd(m, x, y, eps, alpha, steps, norm, loss=loss, random_start=True, restarts=restarts)
    if attack == "fgsm":
        return pgd(m, x, y, eps, eps, 1, norm, loss=loss, random_start=False)
    if attack == "fgsm_rs":
        return fgsm_rs(m, x, y, eps)
    if attack == "trades":
        return trades_attack(m, x, eps, alpha, steps)
    if attack == "apgd":
        return autoattack.apgd(m, x, y, eps, norm, steps=steps, restarts=restarts, loss=loss, seed=seed)
    return autoattack.autoattack(m, x, y, eps, norm, seed=seed)


ATTACKS = ("pgd", "fgsm", "fgsm_rs", "trades", "apgd", "autoattack")


def make_adversarial_set(
    model_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    path: str | Path,
    attack: str = "pgd",
    eps: float = 8 / 255,
    alpha: float = 2 / 255,
    steps: int = 10,
    norm: str = "Linf",
    loss: str = "ce",
    restarts: int = 1,
    source_model: str = "",
    seed: int = 0,
    batch_size: int = 500,
    dataset: str = "",
    idx: Optional[torch.Tensor] = None,
    save_clean: bool = True,
    extra_meta: Optional[dict] = None,
) -> dict:
    """Attack ``x`` (uint8 or ``[0, 1]`` floats, on the device to attack on) with ``attack`` against
    ``model_fn`` (logits or ``(logits, features)``; in eval mode) and save one file at ``path``.

    ``attack``: ``pgd`` (``loss`` ce / cw / dlr, ``restarts``), ``fgsm`` (one step of ``eps``, no
    random start), ``fgsm_rs``, ``trades`` (KL), ``apgd`` (pyautoattack, ``loss`` ce / dlr) or
    ``autoattack`` (standard). The global RNG is seeded with ``seed`` inside a forked RNG state
    (the caller's RNG is untouched), batch by batch, so the same call writes the same file on the
    same device. Returns the metadata written (the file's layout: :mod:`datamodules.adversarial`).
    """
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack '{attack}'; choose one of {list(ATTACKS)}")
    if not source_model:
        raise ValueError("source_model must name the model attacked (it is how the set is matched later)")
    if isinstance(model_fn, nn.Module) and model_fn.training:
        raise ValueError("put the source model in eval mode (model.eval()) before attacking it")
    check_eps(eps, norm)
    if len(x) != len(y) or x.ndim != 4:
        raise ValueError(f"expected images (N, C, H, W) and N labels, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.is_floating_point() and (x.min() < 0 or x.max() > 1):
        raise ValueError("float images must lie in [0, 1] (or pass uint8)")
    dev = x.device
    advs, clean_ok, adv_ok = [], 0, 0
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        for i in range(0, len(x), batch_size):
            xb, yb = to_unit(x[i : i + batch_size]), y[i : i + batch_size].to(dev)
            xa = _craft(attack, model_fn, xb, yb, eps, alpha, steps, norm, loss, restarts, seed).detach().float()
            with torch.no_grad():
                clean_ok += int((logits_of(model_fn, xb).argmax(1) == yb).sum())
                adv_ok += int((logits_of(model_fn, xa).argmax(1) == yb).sum())
            advs.append(xa.cpu())
    x_adv = torch.cat(advs)
    meta = {
        "format": FORMAT,
        "attack": attack,
        "eps": float(eps),
        "alpha": float(alpha),
        "steps": int(steps),
        "norm": str(norm),
        "loss": str(loss),
        "restarts": int(restarts),
        "source_model": str(source_model),
        "seed": int(seed),
        "dataset": str(dataset),
        "n": int(len(x)),
        "batch_size": int(batch_size),
        "image_shape": list(x.shape[1:]),
        "clean_acc": clean_ok / max(1, len(x)),
        "adv_acc": adv_ok / max(1, len(x)),
        "seconds": round(time.perf_counter() - t0, 3),
        "torch": str(torch.__version__),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for k, v in (extra_meta or {}).items():
        if k in meta:
            raise ValueError(f"extra_meta key '{k}' would overwrite a standard metadata key")
        if not isinstance(v, (str, int, float, bool, type(None))):
            raise ValueError(f"extra_meta['{k}'] must be a plain str/int/float/bool/None, got {type(v).__name__}")
        meta[k] = v
    obj = {
        "x_adv": x_adv,
        "y": y.detach().long().cpu(),
        "idx": (idx if idx is not None else torch.arange(len(x))).long().cpu(),
        "meta": meta,
    }
    if save_clean:
        obj["x_clean"] = x.detach().cpu() if x.dtype == torch.uint8 else x.detach().float().cpu()
    atomic_torch_save(obj, Path(path))
    return meta


def checkpoint_hparams(path: str) -> dict:
    """The hyperparameters a Lightning checkpoint at ``path`` was trained with (``{}`` for a bare state dict),
    read with ``weights_only=True``; so the source model is rebuilt at the width it was trained at."""
    from ..cli_checks import read_checkpoint

    if not Path(path).is_file():
        raise FileNotFoundError(f"--checkpoint {path}: no such file")
    ckpt = read_checkpoint(path)
    return dict(ckpt.get("hyper_parameters") or {}) if isinstance(ckpt, dict) else {}


def main(argv: Optional[Sequence[str]] = None) -> None:
    """The command line (see the module docstring): load a CIFAR test set and a source model, write the set."""
    p = argparse.ArgumentParser(description="Attack a CIFAR test set against a source model and store it in one file.")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--dataset", choices=["cifar10", "cifar100"], default="cifar10")
    p.add_argument("--out", required=True)
    p.add_argument("--backbone", default=None, help="default: the checkpoint's, else preact_resnet18")
    p.add_argument("--checkpoint", default=None, help="backbone weights (state dict or Lightning checkpoint)")
    p.add_argument("--robustbench-model", default=None, help="a RobustBench zoo model under --model-dir instead")
    p.add_argument("--model-dir", default="models")
    p.add_argument("--source-model", default=None, help="name stored in the metadata (default from the model)")
    p.add_argument("--attack", default="pgd", choices=ATTACKS)
    p.add_argument("--eps", default="8/255")
    p.add_argument("--alpha", default="2/255")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--norm", default="Linf")
    p.add_argument("--loss", default="ce")
    p.add_argument("--restarts", type=int, default=1)
    p.add_argument("--n-examples", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)
    from ..methods.module import ReversalModule

    if (a.checkpoint is None) == (a.robustbench_model is None):
        p.error("give exactly one of --checkpoint and --robustbench-model")
    nc = 10 if a.dataset == "cifar10" else 100
    hp = checkpoint_hparams(a.checkpoint) if a.checkpoint else {}
    if a.backbone and hp.get("backbone") not in (None, a.backbone):
        p.error(f"--backbone {a.backbone} but {a.checkpoint} was trained as {hp['backbone']}: drop --backbone")
    a.backbone = a.backbone or hp.get("backbone") or "preact_resnet18"
    module = ReversalModule(
        backbone=a.backbone,
        backbone_kwargs=hp.get("backbone_kwargs") or {},
        num_classes=nc,
        normalization=a.dataset,
        backbone_checkpoint=a.checkpoint,
        robustbench_model=a.robustbench_model,
        robustbench_dataset=a.dataset,
        model_dir=a.model_dir,
    )
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device)
    clf = module.classifier.to(device).eval()
    dm = (CIFAR10DataModule if nc == 10 else CIFAR100DataModule)(data_dir=a.data_dir, strict_counts=False)
    x, y = dm.load_split("test")
    if a.n_examples > len(x):
        p.error(f"--n-examples {a.n_examples} but the test set in {a.data_dir} holds {len(x)} images")
    x, y = torch.from_numpy(x[: a.n_examples]).to(device), torch.from_numpy(y[: a.n_examples]).to(device)
    name = a.source_model or (a.robustbench_model or f"{a.backbone}:{Path(a.checkpoint).name}")
    kw = {k: getattr(a, k) for k in ("attack", "steps", "norm", "loss", "restarts", "seed", "batch_size", "dataset")}
    meta = make_adversarial_set(
        clf, x, y, a.out, eps=parse_eps(a.eps), alpha=parse_eps(a.alpha), source_model=name, **kw
    )
    print(
        f"wrote {a.out}: {meta['n']} examples, {a.attack} eps={meta['eps']:.5f} against {name}; "
        f"source accuracy clean {meta['clean_acc']:.2%}, adversarial {meta['adv_acc']:.2%}"
    )


if __name__ == "__main__":
    main()
