"""Dataset layer: formats, normalisation, splits, batching, root resolution, safety.

Every file is written here, by the test, in the exact upstream format (IDX big-endian
headers, gzip, Python-2 style CIFAR pickles), so the expectations come from the format
specifications, not from the loader's own code.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from bioplausible.data import DataBundle, Split, list_datasets, load_dataset, resolve_root, verify
from bioplausible.errors import ConfigError, CorruptDataError, MissingDataError, UnknownNameError

# --------------------------------------------------------------------------- file writers


def idx_bytes(arr: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array: 0x00 0x00 0x08 ndim, big-endian dims, payload."""
    head = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.astype(np.uint8).tobytes()


def mnist_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) * 3 + seed) % 10
    return images, labels.astype(np.uint8)


def write_mnist(root: Path, folder: str = "mnist", gz: bool = True, n=(24, 12)) -> dict:
    d = root / folder
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, count, seed in (("train", n[0], 1), ("t10k", n[1], 2)):
        images, labels = mnist_arrays(count, seed)
        out[split] = (images, labels)
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{split}-{kind}-ubyte"
            data = idx_bytes(arr)
            if gz:
                (d / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (d / name).write_bytes(data)
    return out


def _op_str(s: bytes) -> bytes:  # SHORT_BINSTRING / BINSTRING: a Python 2 str
    return (b"U" + bytes([len(s)]) if len(s) < 256 else b"T" + struct.pack("<I", len(s))) + s


def py2_pickle(d: dict) -> bytes:
    """A protocol-2 pickle spelled like the official CIFAR files (Python 2 str opcodes)."""
    out = [b"\x80\x02}("]
    for key, value in d.items():
        out.append(_op_str(key))
        if isinstance(value, np.ndarray):
            out.append(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
            out.append(b"K\x00\x85" + _op_str(b"b") + b"\x87R")  # (ndarray, (0,), b'b')
            shape = b"(" + b"".join(b"J" + struct.pack("<i", s) for s in value.shape) + b"t"
            out.append(b"(K\x01" + shape)  # state: (1, shape, dtype, fortran, data)
            out.append(b"cnumpy\ndtype\n" + _op_str(b"u1") + b"\x89\x88\x87R")
            out.append(b"(K\x03" + _op_str(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
            out.append(b"\x89" + _op_str(value.astype(np.uint8).tobytes()) + b"tb")
        elif isinstance(value, list) and all(isinstance(v, int) for v in value):
            out.append(b"](" + b"".join(b"J" + struct.pack("<i", v) for v in value) + b"e")
        elif isinstance(value, list):
            out.append(b"](" + b"".join(_op_str(v) for v in value) + b"e")
        else:
            out.append(_op_str(value))
    out.append(b"u.")
    return b"".join(out)


def cifar_arrays(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), [(i + seed) % 10 for i in range(n)]


def write_cifar10(root: Path, n: int = 4, style: str = "py2") -> dict:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data, labels = cifar_arrays(n, seed=i)
        out[name] = (data, labels)
        entry = {b"batch_label": name.encode(), b"labels": labels, b"data": data}
        if style == "py2":
            blob = py2_pickle(entry)
        elif style == "py3-bytes":
            blob = pickle.dumps(entry, protocol=2)
        elif style == "py3-default":
            blob = pickle.dumps(entry)
        else:  # str keys, as a Python 3 re-pickling with encoding="latin1" would produce
            blob = pickle.dumps({k.decode(): v for k, v in entry.items()}, protocol=2)
        (d / name).write_bytes(blob)
    names = [b"c%d" % i for i in range(10)]
    (d / "batches.meta").write_bytes(py2_pickle({b"label_names": names, b"num_vis": b"3072"}))
    return out


# --------------------------------------------------------------------------- MNIST family


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_shapes_labels_and_pixels(tmp_path, gz):
    ref = write_mnist(tmp_path, gz=gz)
    b = load_dataset("mnist", tmp_path, normalize="none", download=False)
    assert isinstance(b, DataBundle) and b.val is None
    assert b.train.x.shape == (24, 1, 28, 28) and b.test.x.shape == (12, 1, 28, 28)
    assert b.train.x.dtype == torch.float32 and b.train.y.dtype == torch.int64
    assert torch.equal(b.train.x[:, 0], torch.from_numpy(ref["train"][0]).float())
    assert b.train.y.tolist() == ref["train"][1].tolist()
    assert b.test.y.tolist() == ref["t10k"][1].tolist()
    assert b.info.name == "mnist" and b.info.input_shape == (1, 28, 28)
    assert b.info.num_classes == 10 and b.info.task == "multiclass"


def test_fashion_mnist_reads_its_own_folder(tmp_path):
    ref = write_mnist(tmp_path, folder="fashion-mnist")
    b = load_dataset("fashion_mnist", tmp_path, normalize="unit", download=False)
    assert torch.allclose(b.train.x[:, 0], torch.from_numpy(ref["train"][0]).float() / 255)
    assert b.info.class_names[0] == "T-shirt/top" and b.info.name == "fashion-mnist"
    with pytest.raises(MissingDataError):
        load_dataset("mnist", tmp_path, download=False)


def test_standardize_uses_training_statistics_only(tmp_path):
    ref = write_mnist(tmp_path)
    b = load_dataset("mnist", tmp_path, download=False, val_size=4)
    train_raw = ref["train"][0][:20].astype(np.float64)
    mean, std = train_raw.mean(), train_raw.std()
    assert b.info.mean == pytest.approx((mean,)) and b.info.std == pytest.approx((std,))
    assert float(b.train.x.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(b.train.x.std(correction=0)) == pytest.approx(1.0, abs=1e-4)
    expected_test = (ref["t10k"][0].astype(np.float64) - mean) / std
    assert np.allclose(b.test.x[:, 0].numpy(), expected_test, atol=1e-5)


def test_validation_split_is_the_last_training_examples(tmp_path):
    ref = write_mnist(tmp_path)
    b = load_dataset("mnist", tmp_path, normalize="none", val_size=5, download=False)
    assert len(b.train) == 19 and len(b.val) == 5
    assert b.val.y.tolist() == ref["train"][1][19:].tolist()
    assert torch.equal(b.val.x[:, 0], torch.from_numpy(ref["train"][0][19:]).float())
    with pytest.raises(ConfigError):
        load_dataset("mnist", tmp_path, val_size=24, download=False)


def test_one_hot_flatten_subset_and_dtype(tmp_path):
    ref = write_mnist(tmp_path)
    b = load_dataset(
        "mnist",
        tmp_path,
        one_hot=True,
        flatten=True,
        subset=12,
        dtype=torch.float64,
        download=False,
    )
    assert b.train.x.shape == (12, 784) and b.info.input_shape == (784,)
    assert b.train.x.dtype == torch.float64
    # subset cuts the training split only: the test split is the whole test file, in order
    assert len(b.test) == len(ref["t10k"][1]) == 12
    assert b.test.y.argmax(1).tolist() == ref["t10k"][1].tolist()
    assert b.train.y.shape == (12, 10) and b.train.y.dtype == torch.float64
    assert b.train.y.argmax(1).tolist() == ref["train"][1][:12].tolist()
    assert b.train.y.sum(1).eq(1).all()


def test_split_to_and_batches():
    x, y = torch.arange(10.0).view(10, 1), torch.arange(10)
    s = Split(x, y)
    assert len(s) == 10
    assert [len(xb) for xb, _ in s.batches(4)] == [4, 4, 2]
    assert [len(xb) for xb, _ in s.batches(4, drop_last=True)] == [4, 4]
    assert torch.equal(torch.cat([yb for _, yb in s.batches(3)]), y)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a = torch.cat([yb for _, yb in s.batches(3, shuffle=True, generator=g1)])
    b = torch.cat([yb for _, yb in s.batches(3, shuffle=True, generator=g2)])
    assert torch.equal(a, b) and sorted(a.tolist()) == list(range(10)) and not torch.equal(a, y)
    for xb, yb in s.batches(3, shuffle=True):
        assert torch.equal(xb[:, 0].long(), yb)  # inputs and targets stay paired
    d = s.to(dtype=torch.float64)
    assert d.x.dtype == torch.float64 and d.y.dtype == torch.int64
    f = Split(x, torch.zeros(10, 3)).to(dtype=torch.float16)
    assert f.y.dtype == torch.float16


def test_resolve_root_order(tmp_path, monkeypatch):
    monkeypatch.setenv("BIOPLAUSIBLE_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_root(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_root() == tmp_path / "env"
    monkeypatch.delenv("BIOPLAUSIBLE_DATA")
    assert resolve_root() == tmp_path / "xdg" / "bioplausible"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_root() == tmp_path / "home" / ".cache" / "bioplausible"


def test_env_root_is_used_by_load_dataset(tmp_path, monkeypatch):
    write_mnist(tmp_path)
    monkeypatch.setenv("BIOPLAUSIBLE_DATA", str(tmp_path))
    assert len(load_dataset("mnist", download=False).train) == 24


def test_missing_files_give_one_actionable_line(tmp_path):
    with pytest.raises(MissingDataError) as err:
        load_dataset("mnist", tmp_path, download=False)
    msg = str(err.value)
    assert "\n" not in msg and "train-images-idx3-ubyte[.gz]" in msg and "download=True" in msg
    assert str(tmp_path / "mnist") in msg and "BIOPLAUSIBLE_DATA" in msg
    assert isinstance(err.value, ValueError)


def test_unknown_dataset_and_option(tmp_path):
    with pytest.raises(UnknownNameError, match="mnist"):
        load_dataset("mnsit", tmp_path, download=False)
    with pytest.raises(ConfigError, match="label_mode"):
        load_dataset("mnist", tmp_path, download=False, label_mode="coarse")
    with pytest.raises(ConfigError):
        load_dataset("mnist", tmp_path, download=False, normalize="zscore")
    assert {"mnist", "fashion-mnist", "cifar10"} <= set(list_datasets())


def test_truncated_idx_is_detected_and_named(tmp_path):
    write_mnist(tmp_path, gz=False)
    path = tmp_path / "mnist" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CorruptDataError) as err:
        load_dataset("mnist", tmp_path, download=False)
    assert "train-images-idx3-ubyte" in str(err.value) and "truncated" in str(err.value)
    assert "\n" not in str(err.value)
    assert any("truncated" in p for p in verify("mnist", tmp_path))


def test_wrong_magic_is_detected(tmp_path):
    write_mnist(tmp_path, gz=False)
    path = tmp_path / "mnist" / "train-labels-idx1-ubyte"
    data = bytearray(path.read_bytes())
    data[3] = 3  # claims 3 dimensions: 0x00000803 where 0x00000801 is expected
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptDataError, match="magic.*train-labels|train-labels.*magic"):
        load_dataset("mnist", tmp_path, download=False)


def test_corrupt_gzip_is_named(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-12])  # cut the deflate stream and the trailer
    with pytest.raises(CorruptDataError, match="t10k-labels-idx1-ubyte.gz"):
        load_dataset("mnist", tmp_path, download=False)


def test_label_count_mismatch_is_detected(tmp_path):
    write_mnist(tmp_path)
    labels = np.zeros(7, dtype=np.uint8)
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    with pytest.raises(CorruptDataError, match="t10k-labels"):
        load_dataset("mnist", tmp_path, download=False)


# --------------------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("style", ["py2", "py3-bytes", "py3-str", "py3-default"])
def test_cifar10_pickles(tmp_path, style):
    ref = write_cifar10(tmp_path, style=style)
    b = load_dataset("cifar10", tmp_path, normalize="none", download=False)
    assert b.train.x.shape == (20, 3, 32, 32) and b.test.x.shape == (4, 3, 32, 32)
    row = ref["data_batch_1"][0][0]
    assert b.train.x[0, 0, 0].tolist() == row[:32].tolist()  # red plane, first image row
    assert b.train.x[0, 1, 0].tolist() == row[1024:1056].tolist()  # green plane
    assert b.train.x[0, 2, 31, 31] == row[3071]
    third = ref["data_batch_3"][0][1]  # batches are concatenated in order
    assert b.train.x[9].reshape(-1).tolist() == third.tolist()
    expected = [label for k in range(1, 6) for label in ref[f"data_batch_{k}"][1]]
    assert b.train.y.tolist() == expected and b.test.y.tolist() == ref["test_batch"][1]
    assert b.info.class_names == [f"c{i}" for i in range(10)]


def test_cifar10_standardize_is_per_channel(tmp_path):
    ref = write_cifar10(tmp_path)
    b = load_dataset("cifar10", tmp_path, download=False)
    raw = np.concatenate([ref[f"data_batch_{k}"][0] for k in range(1, 6)]).reshape(-1, 3, 1024)
    assert b.info.mean == pytest.approx(tuple(raw.mean(axis=(0, 2))))
    assert b.info.std == pytest.approx(tuple(raw.std(axis=(0, 2))))
    per_channel = b.train.x.transpose(0, 1).reshape(3, -1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(3), atol=1e-5)


class _Exploit:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


@pytest.mark.parametrize("payload", ["system", "eval"])
def test_malicious_pickle_is_rejected_without_running(tmp_path, payload):
    write_cifar10(tmp_path)
    sentinel = tmp_path / "pwned"
    if payload == "system":
        evil = _Exploit(os.system, f"touch {sentinel}")
    else:
        evil = _Exploit(eval, f"open({str(sentinel)!r}, 'w')")
    blob = pickle.dumps({b"data": evil, b"labels": [0]}, protocol=2)
    assert (b"system" if payload == "system" else b"eval") in blob
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(blob)
    with pytest.raises(CorruptDataError, match="data_batch_2"):
        load_dataset("cifar10", tmp_path, download=False)
    assert not sentinel.exists()


def test_truncated_pickle_is_named(tmp_path):
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CorruptDataError, match="test_batch"):
        load_dataset("cifar10", tmp_path, download=False)


# --------------------------------------------------------------------------- real data


def _real_root() -> Path | None:
    env = os.environ.get("BIOPLAUSIBLE_DATA")
    if env and (Path(env) / "mnist").is_dir():
        return Path(env)
    return None


@pytest.mark.skipif(_real_root() is None, reason="real MNIST not available (set BIOPLAUSIBLE_DATA)")
def test_real_mnist_matches_published_facts():
    b = load_dataset("mnist", _real_root(), normalize="none", download=False)
    assert len(b.train) == 60000 and len(b.test) == 10000
    assert b.train.y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert b.test.y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert float(b.train.x.double().mean()) == pytest.approx(33.318, abs=1e-3)
    assert b.train.y.bincount().tolist() == [
        5923,
        6742,
        5958,
        6131,
        5842,
        5421,
        5918,
        6265,
        5851,
        5949,
    ]


def test_dtype_by_name_and_float64_precision(tmp_path):
    ref = write_mnist(tmp_path)
    b = load_dataset("mnist", tmp_path, dtype="float64", download=False)
    raw = ref["train"][0].astype(np.float64)
    expected = (raw - raw.mean()) / raw.std()
    assert b.train.x.dtype == torch.float64
    assert np.allclose(b.train.x[:, 0].numpy(), expected, atol=1e-12)
    with pytest.raises(ConfigError, match="dtype"):
        load_dataset("mnist", tmp_path, dtype="int32", download=False)
