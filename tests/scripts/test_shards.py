"""scripts/shards.py: weights as bf16 shards under a size limit and back (the tiny GPU run's weights are
rebuilt into a module in test_gpu_run.py)."""

from __future__ import annotations

import pytest
import torch

from scripts.shards import load_shards, save_shards, shard_files, to_bf16


def test_shard_round_trip_equals_the_bf16_weights(tmp_path):
    torch.manual_seed(0)
    sd = {
        "a.weight": torch.randn(300, 300),
        "b.weight": torch.randn(200, 300),
        "bn.num_batches_tracked": torch.tensor(7),
    }
    names = save_shards(sd, tmp_path, extra={"note": 1}, max_bytes=250_000)  # forces several shards
    assert len(names) >= 2 and names[0].endswith(f"-of-{len(names):02d}.pt")
    back = load_shards(tmp_path)
    assert back.keys() == sd.keys()
    for k, v in to_bf16(sd).items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    (tmp_path / names[-1]).unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        shard_files(tmp_path)
    with pytest.raises(ValueError, match="exceeds the shard limit"):
        save_shards({"big": torch.zeros(1000, 1000)}, tmp_path / "x", max_bytes=300_000)
