"""Shared fixtures: one torch thread, synthetic datasets, and the real-data root when present."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    """Write ``array`` (uint8) in the IDX format (magic 0x0000 08 ndim, big-endian dims)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if compress:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def make_synthetic_mnist(root: Path, n_train: int = 240, n_test: int = 60, seed: int = 0) -> Path:
    """A tiny learnable MNIST lookalike: class k lights up a k-dependent block of pixels."""
    rng = np.random.default_rng(seed)
    folder = root / "mnist"
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        images = rng.integers(0, 40, size=(n, 28, 28)).astype(np.uint8)
        for i, k in enumerate(labels):
            r, c = divmod(int(k), 5)
            images[i, 4 + 10 * r: 12 + 10 * r, 2 + 5 * c: 6 + 5 * c] = 250
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture
def synthetic_root(tmp_path, monkeypatch) -> Path:
    root = make_synthetic_mnist(tmp_path / "data")
    monkeypatch.setenv("BIOPLAUSIBLE_DATA", str(root))
    return root


@pytest.fixture
def real_data_root() -> Path:
    root = os.environ.get("BIOPLAUSIBLE_DATA")
    if not root or not (Path(root) / "mnist").is_dir():
        pytest.skip("real datasets not available (set BIOPLAUSIBLE_DATA)")
    return Path(root)


def make_bundle(n_train: int = 256, n_test: int = 64, dim: int = 20, classes: int = 4, seed: int = 0,
                dtype=torch.float32):
    """A linearly separable in-memory classification bundle built from tensors."""
    from bioplausible.data import DataBundle, DatasetInfo, Split

    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g) * 3

    def split(n):
        y = torch.randint(0, classes, (n,), generator=g)
        x = centers[y] + torch.randn(n, dim, generator=g)
        return Split(x.to(dtype), y)

    info = DatasetInfo(name="blobs", input_shape=(dim,), num_classes=classes, task="multiclass")
    return DataBundle(train=split(n_train), test=split(n_test), val=None, info=info)
