"""ImageNet data module on a tiny ImageFolder of 64x64 JPEGs: labels, transforms, subset files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules import DataFileError, ImageNetDataModule
from datamodules.imagenet import imagenet_wnids, read_subset, robustbench_subset_file


def write_folder(root: Path, wnids: list[str], per_class: int, size: int = 64, prefix: str = "img") -> list[str]:
    from PIL import Image

    rng = np.random.default_rng(0)
    rel = []
    for k, w in enumerate(wnids):
        (root / w).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = np.full((size, size + 16, 3), 30 * k + 10 * i, np.uint8)  # not square: resize + crop matter
            arr[:4] = rng.integers(0, 256, (4, size + 16, 3))
            f = f"{prefix}_{k}{i:04d}.JPEG"
            Image.fromarray(arr).save(root / w / f, quality=95)
            rel.append(f"{w}/{f}")
    return rel


@pytest.fixture()
def tiny_imagenet(tmp_path):
    wn = imagenet_wnids()
    wnids = [wn[0], wn[7], wn[999]]
    write_folder(tmp_path / "train", wnids, 4, prefix="train")
    rel = write_folder(tmp_path / "val", wnids, 2, prefix="ILSVRC2012_val")
    return tmp_path, wnids, rel


def test_standard_labels_transforms_and_batches(tiny_imagenet):
    root, wnids, rel = tiny_imagenet
    dm = ImageNetDataModule(str(root), batch_size=4, eval_batch_size=5, image_size=32, resize_size=40, num_workers=0)
    dm.setup("fit")
    assert dm.num_classes == 1000
    x, y, idx = next(iter(dm.val_dataloader()))
    assert x.shape == (5, 3, 32, 32) and x.dtype == torch.uint8
    assert y.tolist() == [0, 0, 7, 7, 999] and idx.tolist() == [0, 1, 2, 3, 4]  # standard 1k indices, sorted files
    # eval: resize shorter side to 40 then centre crop 32 -> the top noise rows (4 of 64 px) are cropped away
    assert float(x[2].float().std()) < 3 and abs(float(x[2].float().mean()) - 30) < 3
    xb, yb, ib = next(iter(dm.train_dataloader()))
    assert xb.shape == (4, 3, 32, 32) and xb.dtype == torch.uint8 and set(yb.tolist()) <= {0, 7, 999}
    assert len(dm.train_dataloader()) == 3  # 12 images, drop_last
    # folder labels instead
    dm = ImageNetDataModule(str(root), class_index="folder", eval_batch_size=6, num_workers=0)
    dm.setup("test")
    assert dm.num_classes == 3 and next(iter(dm.test_dataloader()))[1].tolist() == [0, 0, 1, 1, 2, 2]


def test_subset_file_order_and_n_examples(tiny_imagenet, tmp_path):
    root, wnids, rel = tiny_imagenet
    sub = tmp_path / "ids.txt"
    sub.write_text("\n".join([rel[5], rel[0], rel[3]]))  # no trailing newline, like robustbench's file
    dm = ImageNetDataModule(str(root), subset_file=str(sub), n_examples=2, eval_batch_size=8, num_workers=0)
    dm.setup("test")
    x, y, idx = next(iter(dm.test_dataloader()))
    assert y.tolist() == [999, 0] and idx.tolist() == [0, 1] and len(dm.datasets["val"]) == 2
    with pytest.raises(DataFileError, match="n_examples=5"):
        ImageNetDataModule(str(root), subset_file=str(sub), n_examples=5, num_workers=0).setup("test")
    sub.write_text(rel[0] + "\n" + f"{wnids[0]}/missing.JPEG\n")
    with pytest.raises(DataFileError, match="1 of the 2 subset images are missing"):
        ImageNetDataModule(str(root), subset_file=str(sub), num_workers=0).setup("test")
    sub.write_text("/abs/path.JPEG\n")
    with pytest.raises(DataFileError, match="relative paths"):
        read_subset(sub)


def test_robustbench_subset_file_is_found():
    ids = read_subset("robustbench")
    assert len(ids) == 5000 and robustbench_subset_file().name == "imagenet_test_image_ids.txt"
    assert all(p.split("/")[0] in set(imagenet_wnids()) for p in ids[:50])


def test_missing_and_unknown_folders(tmp_path):
    with pytest.raises(DataFileError, match="val folder not found"):
        ImageNetDataModule(str(tmp_path), num_workers=0).setup("test")
    write_folder(tmp_path / "val", ["n99999999"], 1)
    with pytest.raises(DataFileError, match="not ImageNet wnids"):
        ImageNetDataModule(str(tmp_path), num_workers=0).setup("test")
    (tmp_path / "val" / "n99999999" / "img_00000.JPEG").write_bytes(b"garbage")
    dm = ImageNetDataModule(str(tmp_path), class_index="folder", num_workers=0)
    dm.setup("test")
    with pytest.raises(DataFileError, match="cannot decode image"):
        next(iter(dm.test_dataloader()))


@pytest.mark.parametrize(
    "config",
    [
        "imagenet/standard.yaml",
        "imagenet/ssl_head_on_frozen.yaml",
        "cifar10/corruptions.yaml",
        "cifar10/data_adversarial.yaml",
    ],
)
def test_configs_parse(config, capsys):
    """The experiment files of this issue parse and resolve their classes (nothing is instantiated)."""
    import yaml

    from lightning_modules.cli import run_cli
    from tests.cli_runs import REPO

    args = ["test", "--config", str(REPO / "experiments" / config)]
    if config == "cifar10/data_adversarial.yaml":  # a data block: wrap it
        args = ["test", "--data", str(REPO / "experiments" / config), "--model", "lightning_modules.ReversalModule"]
    elif config == "cifar10/corruptions.yaml":
        args += ["--model", "lightning_modules.ReversalModule"]
    with pytest.raises(SystemExit):
        run_cli(args + ["--print_config"])
    cfg = yaml.safe_load(capsys.readouterr().out)
    if config.startswith("imagenet/"):
        assert cfg["data"]["class_path"] == "datamodules.ImageNetDataModule"
        assert cfg["data"]["init_args"]["subset_file"] == "robustbench"
        assert cfg["model"]["init_args"]["backbone"] == "resnet50"
        assert cfg["model"]["init_args"]["normalization"] == "imagenet"
    elif config == "cifar10/corruptions.yaml":
        assert cfg["data"]["class_path"] == "datamodules.CIFAR10CDataModule"
        paths = [c["class_path"] for c in cfg["trainer"]["callbacks"]]
        assert paths[-1] == "callbacks.CorruptionReport" and "callbacks.AtomicCheckpoint" in paths
    else:
        assert cfg["data"]["init_args"]["expect"]["attack"] == "pgd"
