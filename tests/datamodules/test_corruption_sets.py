"""CIFAR-10-C / CIFAR-100-C / ImageNet-C data modules on small synthetic files in the official layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules import CIFAR10CDataModule, CIFAR100CDataModule, DataFileError, ImageNetCDataModule
from datamodules.corruptions import CORRUPTIONS
from datamodules.imagenet import imagenet_wnids


def write_cifar_c(
    root: Path,
    n: int = 6,
    corruptions=("fog", "snow"),
    num_classes: int = 10,
    folder="CIFAR-10-C",
    tiled_labels: bool = True,
    seed: int = 0,
) -> tuple[Path, np.ndarray]:
    """``root/folder/labels.npy`` + ``<corruption>.npy`` (5 n, 32, 32, 3) uint8; image value =
    encodes (corruption, severity, index) so tests can check which rows were served."""
    rng = np.random.default_rng(seed)
    d = root / folder
    d.mkdir(parents=True, exist_ok=True)
    y = rng.integers(0, num_classes, n)
    np.save(d / "labels.npy", np.tile(y, 5).astype(np.uint8) if tiled_labels else y)
    for ci, c in enumerate(corruptions):
        x = np.zeros((5 * n, 32, 32, 3), np.uint8)
        for s in range(5):
            for i in range(n):
                x[s * n + i, :, :, 0] = ci
                x[s * n + i, :, :, 1] = s + 1
                x[s * n + i, :, :, 2] = i
        np.save(d / f"{c}.npy", x)
    return root, y


def test_reads_selected_sets_in_order(tmp_path):
    root, y = write_cifar_c(tmp_path)
    dm = CIFAR10CDataModule(str(root), corruptions=["snow", "fog"], severities=[5, 2], n_examples=4, eval_batch_size=3)
    dm.setup("test")
    assert dm.test_set_names == ["snow/5", "snow/2", "fog/5", "fog/2"]
    loaders = dm.test_dataloader()
    assert len(loaders) == 4
    for name, loader in zip(dm.test_set_names, loaders):
        batches = list(loader)
        x = torch.cat([b[0] for b in batches])
        yy = torch.cat([b[1] for b in batches])
        idx = torch.cat([b[2] for b in batches])
        assert x.shape == (4, 3, 32, 32) and x.dtype == torch.uint8  # NHWC on disk -> NCHW
        c, s = name.split("/")
        assert (x[:, 0] == ["fog", "snow"].index(c)).all() and (x[:, 1] == int(s)).all()
        assert torch.equal(x[:, 2, 0, 0], torch.arange(4, dtype=torch.uint8))
        assert torch.equal(yy, torch.from_numpy(y[:4]).long()) and torch.equal(idx, torch.arange(4))


def test_defaults_are_all_15_and_untiled_labels(tmp_path):
    root, y = write_cifar_c(tmp_path, n=3, corruptions=CORRUPTIONS, tiled_labels=False)
    dm = CIFAR10CDataModule(str(root))
    dm.setup("test")
    assert len(dm.test_set_names) == 75 and dm.test_set_names[0] == "gaussian_noise/1"
    assert dm.test_set_names[-1] == "jpeg_compression/5"
    _, yy, _ = next(iter(dm.test_dataloader()[-1]))
    assert torch.equal(yy, torch.from_numpy(y).long())


def test_cifar100c(tmp_path):
    root, y = write_cifar_c(tmp_path, corruptions=("contrast",), num_classes=100, folder="CIFAR-100-C")
    dm = CIFAR100CDataModule(str(root), corruptions=["contrast"], severities=[1])
    dm.setup("test")
    assert dm.num_classes == 100 and len(dm.test_dataloader()) == 1


def test_bad_config_and_files(tmp_path):
    with pytest.raises(ValueError, match="unknown corruption"):
        CIFAR10CDataModule(str(tmp_path), corruptions=["fogg"])
    with pytest.raises(ValueError, match="severities"):
        CIFAR10CDataModule(str(tmp_path), severities=[0, 3])
    with pytest.raises(DataFileError, match="make corruptions-cifar10"):
        CIFAR10CDataModule(str(tmp_path)).setup("test")
    root, _ = write_cifar_c(tmp_path)
    d = root / "CIFAR-10-C"
    with pytest.raises(ValueError, match="test set"):
        CIFAR10CDataModule(str(root), corruptions=["fog"]).setup("fit")
    with pytest.raises(DataFileError, match="contrast.npy"):  # missing corruption file
        CIFAR10CDataModule(str(root), corruptions=["contrast"]).setup("test")
    with pytest.raises(DataFileError, match="n_examples=7"):
        CIFAR10CDataModule(str(root), corruptions=["fog"], n_examples=7).setup("test")

    def expect_error(match: str, **kw) -> None:
        with pytest.raises(DataFileError, match=match):
            CIFAR10CDataModule(str(root), corruptions=["fog"], **kw).setup("test")

    good = np.load(d / "fog.npy")
    np.save(d / "fog.npy", good.transpose(0, 3, 1, 2))  # NCHW instead of NHWC
    expect_error(r"fog\.npy.*NHWC")
    np.save(d / "fog.npy", good.astype(np.float32))
    expect_error(r"fog\.npy.*uint8")
    np.save(d / "fog.npy", good[:-1])  # 29 rows: not 5 x n
    expect_error(r"fog\.npy: 29 rows")
    np.save(d / "fog.npy", np.concatenate([good, good[:5]]))  # 35 rows = 5 x 7, labels for 6
    expect_error(r"35 rows .* 30 labels")
    (d / "fog.npy").write_bytes(b"not a numpy file at all")
    expect_error(r"fog\.npy: not a readable")
    np.save(d / "fog.npy", np.array([{"a": 1}] * 30, dtype=object), allow_pickle=True)  # pickled objects refused
    expect_error(r"fog\.npy: not a readable")
    np.save(d / "fog.npy", good)
    labels = np.load(d / "labels.npy")
    np.save(d / "labels.npy", labels.astype(np.float32))
    expect_error(r"labels\.npy: labels must be a 1-D integer")
    bad = labels.copy()
    bad[0] = 10
    np.save(d / "labels.npy", bad)
    expect_error(r"labels out of range")
    bad = labels.copy()
    bad[6 * 2] = (bad[0] + 1) % 10  # severity 3's block differs
    np.save(d / "labels.npy", bad)
    expect_error(r"severity 3 differ")
    np.save(d / "labels.npy", labels)
    CIFAR10CDataModule(str(root), corruptions=["fog"]).setup("test")  # repaired: loads again


def _write_jpeg(path: Path, value: int, size: int = 64) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size, size, 3), value, np.uint8)
    Image.fromarray(arr).save(path, quality=95)


def test_imagenet_c_folder(tmp_path):
    wn = imagenet_wnids()
    wnids = [wn[3], wn[500]]
    names = []
    for c in ("fog", "contrast"):
        for s in (1, 2):
            for k, w in enumerate(wnids):
                for i in range(2):
                    f = f"ILSVRC2012_val_{k * 10 + i:08d}.JPEG"
                    _write_jpeg(tmp_path / "ImageNet-C" / c / str(s) / w / f, 40 * s + 10 * i, size=224)
                    if c == "fog" and s == 1:
                        names.append(f"{w}/{f}")
    dm = ImageNetCDataModule(
        str(tmp_path), corruptions=["fog", "contrast"], severities=[1, 2], num_workers=0, eval_batch_size=3
    )
    dm.setup("test")
    loaders = dm.test_dataloader()
    assert dm.test_set_names == ["fog/1", "fog/2", "contrast/1", "contrast/2"] and len(loaders) == 4
    x, y, idx = next(iter(loaders[1]))
    assert x.shape == (3, 3, 224, 224) and x.dtype == torch.uint8
    assert y.tolist() == [3, 3, 500] and idx.tolist() == [0, 1, 2]
    assert abs(float(x[0].float().mean()) - 80) < 3  # severity 2, i = 0 -> value 80
    # a subset file (relative <wnid>/<file> lines) picks and orders the images
    sub = tmp_path / "ids.txt"
    sub.write_text("\n".join([names[3], names[0]]) + "\n")
    dm = ImageNetCDataModule(
        str(tmp_path), corruptions=["contrast"], severities=[2], subset_file=str(sub), num_workers=0
    )
    dm.setup("test")
    x, y, _ = next(iter(dm.test_dataloader()[0]))
    assert y.tolist() == [500, 3] and abs(float(x[0].float().mean()) - 90) < 3
    with pytest.raises(DataFileError, match="ImageNet-C set missing"):
        ImageNetCDataModule(str(tmp_path), corruptions=["snow"], num_workers=0).setup("test")
