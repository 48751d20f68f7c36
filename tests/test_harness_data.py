"""Data loaders on small files the tests write: IDX (plain and gzipped), CIFAR-10 pickles; splits."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from lawn.harness import data_files, datasets
from lawn.harness.checked import checked
from lawn.harness.config import RunConfig
from lawn.harness.data_files import load_cifar10_dir, load_idx_dir, read_cifar_batch, read_idx
from lawn.harness.datasets import load_data


def idx_bytes(array: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(data_files.IDX_TYPES[code]).tobytes()


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("code", [0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E])
def test_read_idx_round_trips_every_type(tmp_path: Path, gz: bool, code: int) -> None:
    rng = np.random.default_rng(code)
    array = rng.integers(-100 if code != 0x08 else 0, 100, size=(3, 4, 5)).astype(np.float64)
    raw = idx_bytes(array, code)
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(gzip.compress(raw) if gz else raw)
    got = read_idx(path)
    assert got.shape == (3, 4, 5)
    assert got.dtype.byteorder in ("=", "|") or got.dtype.isnative
    np.testing.assert_array_equal(got.astype(np.float64), array)


def test_read_idx_rejects_bad_files(tmp_path: Path) -> None:
    bad_magic = tmp_path / "a"
    bad_magic.write_bytes(b"\x01\x00\x08\x01\x00\x00\x00\x01\x05")
    with pytest.raises(ValueError, match="bad magic"):
        read_idx(bad_magic)
    short = tmp_path / "b"
    short.write_bytes(idx_bytes(np.arange(6).reshape(2, 3), 0x08)[:-1])
    with pytest.raises(ValueError, match=r"declares shape \(2, 3\)"):
        read_idx(short)
    bad_code = tmp_path / "c"
    bad_code.write_bytes(b"\x00\x00\x07\x01\x00\x00\x00\x01\x05")
    with pytest.raises(ValueError, match="type code 0x07"):
        read_idx(bad_code)


def write_idx_dir(directory: Path, n_train: int = 40, n_test: int = 20, gz: bool = True) -> None:
    """A tiny MNIST-style directory: image k of class c is constant (10 c + k) so the tests can check it."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = np.stack([np.full((28, 28), (10 * c + k) % 256) for k, c in enumerate(labels)])
        for kind, array, code in (("images-idx3", images, 0x08), ("labels-idx1", labels, 0x08)):
            raw = idx_bytes(array, code)
            name = f"{split}-{kind}-ubyte"
            if gz:
                (directory / (name + ".gz")).write_bytes(gzip.compress(raw))
            else:
                (directory / name).write_bytes(raw)


@pytest.mark.parametrize("gz", [False, True])
def test_load_idx_dir_finds_standard_names(tmp_path: Path, gz: bool) -> None:
    write_idx_dir(tmp_path, gz=gz)
    arrays = load_idx_dir(tmp_path)
    assert arrays["train_images"].shape == (40, 28, 28) and arrays["test_labels"].shape == (20,)
    assert arrays["train_images"][13, 0, 0] == 10 * 3 + 13
    np.testing.assert_array_equal(arrays["train_labels"], np.arange(40) % 10)


def test_missing_idx_dir_and_files_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match="data directory not found"):
        load_idx_dir(tmp_path / "nope")
    default = tmp_path / "fashion-mnist"
    monkeypatch.setattr(data_files, "FASHION_MNIST_DIR", str(default))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_idx_dir(default)
    write_idx_dir(tmp_path / "partial")
    (tmp_path / "partial" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_idx_dir(tmp_path / "partial")


def test_fashion_mnist_dataset_splits_and_normalises(tmp_path: Path) -> None:
    write_idx_dir(tmp_path, n_train=50, n_test=30)
    config = RunConfig(dataset="fashion_mnist", data_dir=str(tmp_path), val_fraction=0.2, test_limit=25)
    data = load_data(config)
    assert data.x_train.shape == (40, 1, 28, 28) and data.x_val.shape == (10, 1, 28, 28)
    assert data.x_test.shape == (25, 1, 28, 28) and data.num_classes == 10
    assert abs(float(data.x_train.mean())) < 1e-4
    # validation examples are carved from the training file, disjoint from the training split
    train_values = {round(float(x[0, 0, 0]), 4) for x in data.x_train}
    assert not train_values & {round(float(x[0, 0, 0]), 4) for x in data.x_val}
    datasets._cached.cache_clear()
    again = load_data(config.replace(seed=5, method="lawn"))  # run seed and method do not change the split
    assert torch.equal(again.x_val, data.x_val)


def write_cifar_dir(directory: Path, per_batch: int = 2) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    names = [*data_files.CIFAR10_TRAIN, data_files.CIFAR10_TEST]
    for b, name in enumerate(names):
        data = np.zeros((per_batch, 3072), dtype=np.uint8)
        for i in range(per_batch):
            data[i, :1024], data[i, 1024:2048], data[i, 2048:] = 10 * b + i, 100, 200  # R, G, B planes
        entry = {
            b"batch_label": name.encode(),
            b"labels": [(b + i) % 10 for i in range(per_batch)],
            b"data": data,
        }
        (directory / name).write_bytes(pickle.dumps(entry, protocol=2))


def test_cifar_pickle_loader(tmp_path: Path) -> None:
    write_cifar_dir(tmp_path)
    arrays = load_cifar10_dir(tmp_path)
    assert arrays["train_images"].shape == (10, 3, 32, 32) and arrays["test_images"].shape == (2, 3, 32, 32)
    assert arrays["train_images"][3, 0, 5, 7] == 11 and arrays["train_images"][3, 2, 0, 0] == 200
    np.testing.assert_array_equal(arrays["train_labels"][:4], [0, 1, 1, 2])
    data = load_data(RunConfig(dataset="cifar10", data_dir=str(tmp_path), val_fraction=0.2))
    assert data.x_train.shape == (8, 3, 32, 32) and data.x_val.shape == (2, 3, 32, 32)


def test_cifar_loader_refuses_code_in_pickles(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):  # would run a shell command on a plain pickle.load
            return (print, ("pwned",))

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}))
    with pytest.raises(ValueError, match="refusing to load builtins.print"):
        read_cifar_batch(path)
    with pytest.raises(FileNotFoundError, match="missing CIFAR-10 batch"):
        load_cifar10_dir(tmp_path)


def test_generated_datasets_are_deterministic_and_leave_numpy_alone() -> None:
    state = np.random.get_state()[1].copy()
    config = RunConfig(dataset="mnist1d", data_options={"num_samples": 200}, data_seed=3)
    a = load_data(config)
    assert np.array_equal(np.random.get_state()[1], state)
    assert a.x_train.shape[1:] == (40,) and a.train_size + len(a.y_val) == 160 and len(a.y_test) == 40
    digits = load_data(RunConfig(dataset="digits", train_limit=100, test_limit=50))
    assert digits.x_train.shape == (90, 1, 8, 8) and len(digits.y_test) == 50


def test_bad_data_options_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"data_options: \['nope'\] unknown for dataset 'digits'"):
        checked(RunConfig(dataset="digits", data_options={"nope": 1}))
    with pytest.raises(ValueError, match="data_dir: dataset 'mnist1d' is generated"):
        checked(RunConfig(dataset="mnist1d", data_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="needs a directory"):
        load_data(RunConfig(dataset="mnist"))


def test_shuffled_batches_are_the_seeded_permutation_in_order() -> None:
    from lawn.harness.tasks import shuffled_batches

    inputs, targets = torch.randn(11, 2, 3), torch.arange(11)
    batches = list(shuffled_batches(inputs, targets, 4, torch.Generator().manual_seed(5)))
    order = torch.randperm(11, generator=torch.Generator().manual_seed(5))
    assert [len(t) for _, t in batches] == [4, 4, 3]
    for (x, t), idx in zip(batches, order.split(4)):
        assert torch.equal(t, targets[idx]) and torch.equal(x, inputs[idx])  # the rows advanced indexing gives
        assert x.is_contiguous()
    assert torch.equal(torch.cat([t for _, t in batches]), order)
