"""Readers for data files on disk: IDX (MNIST / Fashion-MNIST) and CIFAR-10's python pickles.

IDX layout: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
0x0E float64), the number of dimensions ``d``, then ``d`` big-endian uint32 sizes, then the data, big-endian.
Files may be gzipped (recognised by their magic bytes, whatever their name).

CIFAR-10 python format: ``data_batch_1`` … ``data_batch_5`` and ``test_batch``, each a pickled dict with
``b"data"`` (N × 3072 uint8, channel-major 3×32×32) and ``b"labels"``. The pickles are read with an
unpickler that only admits numpy arrays and plain containers, so a hostile file cannot run code.
"""

from __future__ import annotations

import gzip
import io
import pickle
from pathlib import Path

import numpy as np

IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = "test_batch"


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise ValueError(f"{path}: corrupt gzip data ({err})") from err
    return raw


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (plain or gzipped) into an array of its declared type and shape."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    code, ndim = raw[2], raw[3]
    if code not in IDX_TYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_TYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: IDX header declares shape {shape} ({expected} bytes), but {len(raw) - header} bytes follow"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)


def find_idx(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"{directory}: missing {stem} (or {stem}.gz)")


def check_idx_dir(directory: str | Path) -> None:
    """Raise ``FileNotFoundError`` naming the directory or IDX file that is missing (reads nothing)."""
    directory = Path(directory)
    if not directory.is_dir():
        hint = (
            " (install it with `apt-get install dataset-fashion-mnist`, or pass --data-dir)"
            if str(directory) == FASHION_MNIST_DIR
            else ""
        )
        raise FileNotFoundError(f"data directory not found: {directory}{hint}")
    for stem in IDX_NAMES.values():
        find_idx(directory, stem)


def load_idx_dir(directory: str | Path) -> dict[str, np.ndarray]:
    """The four standard IDX files of an MNIST-style directory: ``train_images`` (N×28×28 uint8) etc."""
    directory = Path(directory)
    check_idx_dir(directory)
    arrays = {key: read_idx(find_idx(directory, stem)) for key, stem in IDX_NAMES.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"{directory}: {split} images {images.shape} and labels {labels.shape} do not match")
    return arrays


# ---------------------------------------------------------------------- CIFAR-10 pickles
def _reconstruct_functions() -> dict[tuple[str, str], object]:
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): __import__("codecs").encode,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except numpy's array reconstruction helpers."""

    allowed = _reconstruct_functions()

    def find_class(self, module: str, name: str) -> object:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data pickle") from None


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch → (images N×3×32×32 uint8, labels N int64)."""
    path = Path(path)
    try:
        entry = _ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
        raise ValueError(f"{path}: not a CIFAR-10 python batch ({err})") from err
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: not a CIFAR-10 python batch (top level is {type(entry).__name__})")
    data = entry.get(b"data", entry.get("data"))
    labels = entry.get(b"labels", entry.get("labels"))
    if data is None or labels is None:
        raise ValueError(f"{path}: not a CIFAR-10 python batch (no 'data' and 'labels' entries)")
    data = np.asarray(data, dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise ValueError(f"{path}: data {data.shape} / labels {labels.shape}; expected N×3072 and N")
    return data.reshape(-1, 3, 32, 32), labels


def check_cifar10_dir(directory: str | Path) -> None:
    """Raise ``FileNotFoundError`` naming the directory or CIFAR-10 batch files that are missing (reads nothing)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"data directory not found: {directory} (expected cifar-10-batches-py)")
    missing = [n for n in (*CIFAR10_TRAIN, CIFAR10_TEST) if not (directory / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory}: missing CIFAR-10 batch file(s) {missing}")


def load_cifar10_dir(directory: str | Path) -> dict[str, np.ndarray]:
    """``cifar-10-batches-py``: the five training batches and the test batch."""
    directory = Path(directory)
    check_cifar10_dir(directory)
    train = [read_cifar_batch(directory / n) for n in CIFAR10_TRAIN]
    test_images, test_labels = read_cifar_batch(directory / CIFAR10_TEST)
    return {
        "train_images": np.concatenate([x for x, _ in train]),
        "train_labels": np.concatenate([y for _, y in train]),
        "test_images": test_images,
        "test_labels": test_labels,
    }
