import pickle

import numpy as np
import pytest

from datamodules.files import DataFileError, read_cifar_batches, safe_unpickle


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED_BY_PICKLE",))


def _write(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return path


def test_reads_both_str_and_bytes_keys(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (5, 3072), dtype=np.uint8)
    a = _write(tmp_path / "a", {"data": x, "labels": [0, 1, 2, 3, 9]})
    b = _write(tmp_path / "b", {b"data": x, b"labels": [9, 8, 7, 6, 5]})
    xs, ys = read_cifar_batches([a, b], num_classes=10)
    assert xs.shape == (10, 3, 32, 32) and xs.dtype == np.uint8 and ys.tolist() == [0, 1, 2, 3, 9, 9, 8, 7, 6, 5]
    assert np.array_equal(xs[0], x[0].reshape(3, 32, 32))  # channel-major rows


@pytest.mark.parametrize(
    "obj,match",
    [
        ({"data": np.zeros((4, 3000), np.uint8), "labels": [0] * 4}, r"\(N, 3072\)"),
        ({"data": np.zeros((4, 3072), np.float32), "labels": [0] * 4}, "uint8"),
        ({"data": np.zeros((4, 3072), np.uint8), "labels": [0] * 3}, "4 images but labels"),
        ({"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 10, 2]}, r"labels out of range \[0, 10\)"),
        ({"data": np.zeros((4, 3072), np.uint8), "labels": [0, -1, 1, 2]}, "out of range"),
        ({"data": np.zeros((4, 3072), np.uint8)}, "missing key 'labels'"),
        ([1, 2, 3], "expected a dict"),
    ],
)
def test_bad_files_raise_naming_the_file(tmp_path, obj, match):
    p = _write(tmp_path / "data_batch_1", obj)
    with pytest.raises(DataFileError, match=match) as e:
        read_cifar_batches([p], 10)
    assert "data_batch_1" in str(e.value)


def test_truncated_and_missing_files(tmp_path):
    p = _write(tmp_path / "test_batch", {"data": np.zeros((100, 3072), np.uint8), "labels": [0] * 100})
    p.write_bytes(p.read_bytes()[:5000])
    with pytest.raises(DataFileError, match="test_batch.*(corrupt|truncated)"):
        safe_unpickle(p)
    with pytest.raises(DataFileError, match="not found.*nope"):
        safe_unpickle(tmp_path / "nope")


def test_code_in_a_pickle_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = _write(tmp_path / "data_batch_1", {"data": _Evil(), "labels": [0]})
    with pytest.raises(
        DataFileError, match="refusing to load global 'posix.system'|refusing to load global 'os.system'"
    ):
        read_cifar_batches([p], 10)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()
