"""Lightning DDP on CPU (2 processes, gloo) through the console script: fit, test and predict.

Validation / test metrics are synced across ranks and equal a single-process run on the same
weights and data; predictions come back in data-set order with every example exactly once. The
test split has an odd size (41), so the two shards are uneven. The attack (eps 0) and the reversal
(0 steps) are identities here so the comparison with one process is exact.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from datamodules.device_loader import DeviceLoader
from lightning_modules.cli import run_cli
from tests.cli_runs import lightning, metric_values, read_metrics, tiny_args
from tests.conftest import write_cifar10

N_TEST = 43  # uneven shards (22 + 21); one process: 5 x 8 + 3 (a last batch of 1 would starve the reversal)
DDP = ["--trainer.devices", "2", "--trainer.strategy", "ddp"]


def args(data: Path, root: Path, *extra: str) -> list[str]:
    return tiny_args(
        data,
        root,
        "--model.init_args.attack.eps",
        "0",
        "--model.init_args.inference.predict_attack",
        "none",
        "--model.init_args.reversal",
        "{steps: 0, n_views: 2}",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        *extra,
    )


def last_value(rows, key: str) -> float:
    values = metric_values(rows, key)
    assert values, f"{key} not logged: {list(rows[0]) if rows else rows}"
    return values[-1][1]


def test_uneven_eval_shards_need_no_repeats():
    """What makes synced metrics exact: every example once, the same number of batches per rank."""
    x, y = torch.zeros(N_TEST, 1, 2, 2, dtype=torch.uint8), torch.arange(N_TEST)
    loaders = [DeviceLoader(x, y, batch_size=8, rank=r, world_size=2) for r in range(2)]
    ids = [torch.cat([b[2] for b in dl]) for dl in loaders]
    assert len(loaders[0]) == len(loaders[1]) == 3
    assert [len(b[2]) for b in loaders[0]] == [8, 7, 7] and [len(b[2]) for b in loaders[1]] == [7, 7, 7]
    assert sorted(torch.cat(ids).tolist()) == list(range(N_TEST))


def test_ddp_fit_test_predict_match_one_process(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = write_cifar10(tmp_path / "data", n_train=32, n_test=N_TEST, learnable=True, seed=1)  # every class in test
    root = tmp_path / "run"

    # fit on 2 ranks: 2 steps, validation on the uneven test split, one checkpoint written by rank 0
    r = lightning("fit", *args(data, root, *DDP), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    last = root / "checkpoints" / "tiny" / "last.ckpt"
    ck = torch.load(last, weights_only=True)
    assert ck["global_step"] == 2 and not list(last.parent.glob("*.tmp-*"))
    ddp_val = last_value(read_metrics(root), "val/acc")
    one = run_cli(["validate", *args(data, root, "--ckpt_path", str(last))])
    assert ddp_val == pytest.approx(one.trainer.callback_metrics["val/acc"].item(), abs=1e-7)

    # test on 2 ranks: the logged (synced) accuracies equal one process on the same checkpoint
    r = lightning("test", *args(data, root, *DDP, "--ckpt_path", str(last)), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    rows = read_metrics(root)
    one = run_cli(["test", *args(data, root, "--ckpt_path", str(last))])
    keys = [k for k in one.trainer.callback_metrics if k.startswith("test/") and k.endswith("acc")]
    assert keys
    for k in keys:
        assert last_value(rows, k) == pytest.approx(one.trainer.callback_metrics[k].item(), abs=1e-7), k
    test_accs = [one.trainer.callback_metrics[k].item() for k in keys]

    # predict on 2 ranks: gathered on rank 0, in data-set order, each example once, equal to one process
    r = lightning("predict", *args(data, root, *DDP, "--ckpt_path", str(last)), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    pred_file = root / "preds" / "predictions.pt"
    ddp = torch.load(pred_file, weights_only=True)
    assert torch.equal(ddp["idx"], torch.arange(N_TEST))
    pred_file.unlink()
    run_cli(["predict", *args(data, root, "--ckpt_path", str(last))])
    single = torch.load(pred_file, weights_only=True)
    assert set(ddp) == set(single)
    for k in single:
        assert torch.equal(ddp[k], single[k]), k
    clean = (single["pred_clean"] == single["y"]).float().mean().item()
    assert 0 < clean < 1  # not a degenerate 0 / 1, which repeated (padded) examples could not change
    assert any(a == pytest.approx(clean, abs=1e-7) for a in test_accs)  # eps 0: the test metrics are clean accuracy
    assert not list(pred_file.parent.glob("*.tmp-*")) and not list(pred_file.parent.glob("part-*"))
