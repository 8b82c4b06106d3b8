"""Adversarial test sets stored in one file: generate once against a source model, reload as a
data set for transfer evaluation (attack model A, test model B) and for reversal experiments.

The file is a ``torch.save`` of a dict of tensors and a metadata dict of plain types, so it loads
with ``weights_only=True``:

- ``x_adv``: float32 ``(N, C, H, W)`` in ``[0, 1]``, exactly what the attack returned (not rounded
  to 8 bits: rounding would move points and the attack would no longer be the one described);
- ``y``: int64 labels; ``idx``: int64 positions of the examples in the source test set;
- ``x_clean``: the clean images (uint8 when they came as uint8), when ``save_clean``;
- ``meta``: ``attack, eps, alpha, steps, norm, loss, restarts, source_model, seed, dataset, n,
  batch_size, image_shape, clean_acc, adv_acc`` (accuracies of the source model), ``format``,
  ``torch``, ``created``.

:class:`AdversarialSetDataModule` refuses a file whose metadata does not match the ``expect``
dict of the request (a mismatch error lists every differing key), so a transfer table can never
silently mix attacks or budgets.

Example:
    >>> import torch
    >>> from datamodules.adversarial import make_adversarial_set, AdversarialSetDataModule
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10)).eval()
    >>> x, y = torch.rand(16, 3, 8, 8), torch.randint(0, 10, (16,))
    >>> meta = make_adversarial_set(net, x, y, "/tmp/adv.pt", attack="pgd", eps=8 / 255, steps=5,
    ...                             source_model="linear-demo", seed=0)
    >>> dm = AdversarialSetDataModule("/tmp/adv.pt", expect={"attack": "pgd", "eps": 8 / 255})
    >>> dm.setup("test"); xb, yb, ib = next(iter(dm.test_dataloader()))
    >>> xb.dtype, len(yb)
    (torch.float32, 16)
"""

from __future__ import annotations

import argparse
import math
import pickle
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn as nn

from lightning_modules.atomic import atomic_torch_save
from lightning_modules.attacks import logits_of
from lightning_modules.evaluation.config import parse_eps

from .base import ArrayDataModule
from .files import DataFileError

FORMAT = 1
_REQUIRED_META = ("attack", "eps", "norm", "source_model", "seed", "n")


class AdversarialSetMismatch(DataFileError):
    """The file's metadata differs from what the caller expects; the message lists every key."""


def _attack_fns() -> dict[str, Callable[..., torch.Tensor]]:
    from lightning_modules.attacks import fgsm_rs, pgd, trades_attack

    def run_pgd(m, x, y, eps, alpha, steps, norm, loss, restarts, seed):
        return pgd(m, x, y, eps, alpha, steps, norm, loss=loss, random_start=True, restarts=restarts)

    def run_fgsm(m, x, y, eps, alpha, steps, norm, loss, restarts, seed):
        return pgd(m, x, y, eps, eps, 1, norm, loss=loss, random_start=False)

    def run_fgsm_rs(m, x, y, eps, alpha, steps, norm, loss, restarts, seed):
        return fgsm_rs(m, x, y, eps)

    def run_trades(m, x, y, eps, alpha, steps, norm, loss, restarts, seed):
        return trades_attack(m, x, eps, alpha, steps)

    def run_apgd(m, x, y, eps, alpha, steps, norm, loss, restarts, seed):
        from lightning_modules.autoattack import apgd

        return apgd(m, x, y, eps, norm, steps=steps, restarts=restarts, loss=loss, seed=seed)

    def run_autoattack(m, x, y, eps, alpha, steps, norm, loss, restarts, seed):
        from lightning_modules.autoattack import autoattack

        return autoattack(m, x, y, eps, norm, seed=seed)

    return {
        "pgd": run_pgd,
        "fgsm": run_fgsm,
        "fgsm_rs": run_fgsm_rs,
        "trades": run_trades,
        "apgd": run_apgd,
        "autoattack": run_autoattack,
    }


ATTACKS = ("pgd", "fgsm", "fgsm_rs", "trades", "apgd", "autoattack")


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255 if x.dtype == torch.uint8 else x.float()


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
    same device. Returns the metadata written.
    """
    from lightning_modules.attacks import check_eps

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
    fn = _attack_fns()[attack]
    dev = x.device
    advs, clean_ok, adv_ok = [], 0, 0
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        for i in range(0, len(x), batch_size):
            xb, yb = _to_unit(x[i : i + batch_size]), y[i : i + batch_size].to(dev)
            xa = fn(model_fn, xb, yb, eps, alpha, steps, norm, loss, restarts, seed).detach().float()
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


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b))
    return a == b


def check_metadata(meta: dict, expect: Optional[dict], path: str | Path = "adversarial set") -> None:
    """Raise :class:`AdversarialSetMismatch` listing every key of ``expect`` that ``meta`` lacks or
    holds with another value (floats compared to a relative 1e-6)."""
    if not expect:
        return
    bad = []
    for k, v in expect.items():
        if k not in meta:
            bad.append(f"{k}: expected {v!r}, file has no such key")
        elif not _same(meta[k], v):
            bad.append(f"{k}: expected {v!r}, file has {meta[k]!r}")
    if bad:
        raise AdversarialSetMismatch(f"{path}: metadata does not match the request:\n  " + "\n  ".join(bad))


def load_adversarial_set(path: str | Path, expect: Optional[dict] = None) -> dict:
    """Load and validate a file written by :func:`make_adversarial_set` (``weights_only=True``),
    then check its metadata against ``expect``. Returns the dict (``x_adv, y, idx, meta[, x_clean]``)."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"adversarial set not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as e:
        raise DataFileError(
            f"{path}: not a readable adversarial-set file ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''})"
        ) from e
    if not isinstance(obj, dict) or not isinstance(obj.get("meta"), dict):
        raise DataFileError(f"{path}: expected a dict with 'x_adv', 'y', 'idx' and 'meta'")
    missing = [k for k in ("x_adv", "y", "idx") if not isinstance(obj.get(k), torch.Tensor)]
    missing += [f"meta.{k}" for k in _REQUIRED_META if k not in obj["meta"]]
    if missing:
        raise DataFileError(f"{path}: missing {missing}")
    x, y, meta = obj["x_adv"], obj["y"], obj["meta"]
    if x.ndim != 4 or not x.is_floating_point():
        raise DataFileError(f"{path}: x_adv must be float (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
    if y.ndim != 1 or len(y) != len(x) or len(obj["idx"]) != len(x) or meta["n"] != len(x):
        raise DataFileError(
            f"{path}: {len(x)} images but {len(y)} labels, {len(obj['idx'])} indices, meta n={meta['n']}"
        )
    if not torch.isfinite(x).all() or (len(x) and (x.min() < 0 or x.max() > 1)):
        raise DataFileError(f"{path}: x_adv holds values outside [0, 1] or NaN/inf")
    if "x_clean" in obj and (not isinstance(obj["x_clean"], torch.Tensor) or obj["x_clean"].shape != x.shape):
        raise DataFileError(f"{path}: x_clean does not match x_adv's shape {tuple(x.shape)}")
    check_metadata(meta, expect, path)
    return obj


class AdversarialSetDataModule(ArrayDataModule):
    """A stored adversarial set as a test / validation / prediction set (batches ``(x, y, idx)``
    with float32 ``x`` in ``[0, 1]``, device-resident like the other array sets).

    Args:
        path: the file written by :func:`make_adversarial_set`.
        expect: metadata the file must hold, e.g. ``{attack: pgd, eps: 0.0313725, source_model: X}``;
            any difference is refused with an error listing the keys.
        images: ``adversarial`` (default) or ``clean`` (the stored clean images, for a baseline).
        n_examples: the first N examples only.
        batch_size / eval_batch_size: batch sizes.
    """

    num_classes = 10
    name = "adversarial"

    def __init__(
        self,
        path: str,
        expect: Optional[dict] = None,
        images: str = "adversarial",
        n_examples: Optional[int] = None,
        batch_size: int = 500,
        eval_batch_size: Optional[int] = None,
        seed: int = 0,
    ) -> None:
        super().__init__(str(Path(path).parent), batch_size, eval_batch_size, 0, n_examples, False, seed)
        if images not in ("adversarial", "clean"):
            raise ValueError(f"images must be 'adversarial' or 'clean', got '{images}'")
        self.path, self.expect, self.images = path, dict(expect or {}), images
        self.meta: dict = {}

    def load_split(self, split: str):
        raise ValueError("AdversarialSetDataModule only has a test split")

    def setup(self, stage: Optional[str] = None) -> None:
        if stage == "fit":
            raise ValueError("AdversarialSetDataModule is a test set: use `lightning test` / predict / validate")
        if "test" in self.splits:
            return
        obj = load_adversarial_set(self.path, self.expect)
        self.meta = obj["meta"]
        if self.images == "clean" and "x_clean" not in obj:
            raise DataFileError(f"{self.path}: no clean images stored (written with save_clean=False)")
        x = obj["x_adv"] if self.images == "adversarial" else obj["x_clean"]
        y = obj["y"]
        if self.n_examples is not None:
            if self.n_examples > len(x):
                raise DataFileError(f"n_examples={self.n_examples} but {self.path} holds {len(x)} examples")
            x, y = x[: self.n_examples], y[: self.n_examples]
        self.splits["test"] = (x.contiguous(), y)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``python -m datamodules.adversarial --data-dir data --out results/adv/pgd.pt --checkpoint CKPT ...``"""
    p = argparse.ArgumentParser(description="Attack a CIFAR test set against a source model and store it in one file.")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--dataset", choices=["cifar10", "cifar100"], default="cifar10")
    p.add_argument("--out", required=True)
    p.add_argument("--backbone", default="preact_resnet18")
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
    from lightning_modules.module import ReversalModule

    from .cifar import CIFAR10DataModule, CIFAR100DataModule

    if (a.checkpoint is None) == (a.robustbench_model is None):
        p.error("give exactly one of --checkpoint and --robustbench-model")
    nc = 10 if a.dataset == "cifar10" else 100
    module = ReversalModule(
        backbone=a.backbone,
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
    meta = make_adversarial_set(
        clf,
        x,
        y,
        a.out,
        attack=a.attack,
        eps=parse_eps(a.eps),
        alpha=parse_eps(a.alpha),
        steps=a.steps,
        norm=a.norm,
        loss=a.loss,
        restarts=a.restarts,
        source_model=name,
        seed=a.seed,
        batch_size=a.batch_size,
        dataset=a.dataset,
    )
    print(
        f"wrote {a.out}: {meta['n']} examples, {a.attack} eps={meta['eps']:.5f} against {name}; "
        f"source accuracy clean {meta['clean_acc']:.2%}, adversarial {meta['adv_acc']:.2%}"
    )


if __name__ == "__main__":
    main()
