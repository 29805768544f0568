"""Readers for the standard on-disk dataset formats; each returns numpy arrays.

Every reader validates what it reads and raises :class:`~bioplausible.errors.CorruptDataError`
naming the file when the content is truncated or malformed. No reader executes code from a
data file: pickles go through a restricted unpickler and ``.npz`` files are opened with
``allow_pickle=False``.
"""

from __future__ import annotations

import gzip
import pickle
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorruptDataError, DataError

_REDOWNLOAD = "delete it and download it again (or replace it with a good copy)"


def read_bytes(path: Path) -> bytes:
    """The file's bytes, transparently gunzipped when it starts with the gzip magic 1f 8b."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise CorruptDataError(f"{path}: corrupt gzip data ({exc}); {_REDOWNLOAD}") from exc
    return data


# --------------------------------------------------------------------------- IDX (MNIST)

#: IDX type codes (third byte of the magic number) -> big-endian numpy dtype.
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read an IDX file (gzipped or raw) as used by MNIST and Fashion-MNIST.

    Layout: a 4-byte big-endian magic number ``0x0000TTDD`` (``TT`` the element type, 0x08 =
    uint8; ``DD`` the number of dimensions), then ``DD`` big-endian uint32 sizes, then the
    row-major payload. Images are ``0x00000803`` (N, rows, cols), labels ``0x00000801`` (N,).
    The payload must be exactly the product of the sizes times the element size.
    """
    data = read_bytes(path)
    if len(data) < 4:
        raise CorruptDataError(f"{path}: only {len(data)} bytes, too short for IDX; {_REDOWNLOAD}")
    found = int.from_bytes(data[:4], "big")
    if found != magic or data[2] not in IDX_DTYPES:
        raise CorruptDataError(
            f"{path}: wrong IDX magic number 0x{found:08x} (expected 0x{magic:08x}); "
            f"this is not the expected IDX file, {_REDOWNLOAD}"
        )
    ndim, dtype = data[3], np.dtype(IDX_DTYPES[data[2]])
    header = 4 + 4 * ndim
    if len(data) < header:
        raise CorruptDataError(f"{path}: truncated IDX header; {_REDOWNLOAD}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    count = int(np.prod(dims, dtype=np.int64))
    expected, payload = count * dtype.itemsize, len(data) - header
    if payload != expected:
        what = "truncated" if payload < expected else "has trailing bytes"
        raise CorruptDataError(
            f"{path}: IDX file {what}: header dims {tuple(dims)} need {expected} payload "
            f"bytes, found {payload}; {_REDOWNLOAD}"
        )
    return np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)


# --------------------------------------------------------------------------- pickles (CIFAR)


def _numpy_globals() -> dict[tuple[str, str], Any]:
    try:  # numpy >= 2
        from numpy._core import multiarray as ma
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray as ma  # type: ignore[no-redef]
    import codecs

    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 pickles (protocol <= 2) spell bytes as _codecs.encode(str, "latin1").
        ("_codecs", "encode"): codecs.encode,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = ma._reconstruct
        allowed[(mod, "scalar")] = ma.scalar
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only resolves the globals needed to rebuild numpy arrays.

    Admitted: ``numpy.core.multiarray._reconstruct`` / ``numpy._core.multiarray._reconstruct``,
    ``numpy.ndarray``, ``numpy.dtype``, ``numpy.(_)core.multiarray.scalar`` and
    ``_codecs.encode`` (a pure str-to-bytes function). Any other global (``os.system``,
    ``builtins.eval``...) raises :class:`CorruptDataError` before anything is called.
    """

    _allowed: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if RestrictedUnpickler._allowed is None:
            RestrictedUnpickler._allowed = _numpy_globals()
        obj = RestrictedUnpickler._allowed.get((module, name))
        if obj is None:
            raise CorruptDataError(f"refusing to unpickle the global {module}.{name}")
        return obj


def _str_keys(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    return obj


def read_pickle(path: Path) -> dict[str, Any]:
    """Load a CIFAR-style python pickle (a dict) safely; keys are returned as ``str``.

    The official CIFAR files are Python 2 pickles (protocol 2) whose keys are byte strings;
    they are read with ``encoding="bytes"`` and the keys decoded, so both ``b"data"`` and
    ``"data"`` forms are accepted. Strings inside values stay ``bytes``; see :func:`text`.
    """
    try:
        with open(path, "rb") as f:
            obj = RestrictedUnpickler(f, encoding="bytes").load()
    except CorruptDataError as exc:
        raise CorruptDataError(f"{path}: {exc} (not a plain data pickle); {_REDOWNLOAD}") from exc
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except Exception as exc:  # any malformed pickle: UnpicklingError, EOFError, ValueError...
        raise CorruptDataError(
            f"{path}: unreadable pickle ({type(exc).__name__}: {exc}); {_REDOWNLOAD}"
        ) from exc
    if not isinstance(obj, dict):
        raise CorruptDataError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    return _str_keys(obj)


def text(value: Any) -> str:
    """Decode a bytes/str value from a pickle (latin-1, as Python 2 wrote it)."""
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def pickle_field(path: Path, d: dict[str, Any], *keys: str) -> Any:
    """The first of ``keys`` present in the pickled dict ``d``, else CorruptDataError."""
    for k in keys:
        if k in d:
            return d[k]
    raise CorruptDataError(f"{path}: missing key {keys[0]!r} (has {sorted(d)}); {_REDOWNLOAD}")


def cifar_batch(path: Path, label_keys: tuple[str, ...] = ("labels",)) -> tuple[np.ndarray, ...]:
    """Read one CIFAR batch: ``data`` uint8 (N, 3072) -> images (N, 3, 32, 32), plus labels.

    Each row of ``data`` is 1024 red, then 1024 green, then 1024 blue values, each plane
    row-major 32x32. Returns the images and one int64 array per entry of ``label_keys``.
    """
    d = read_pickle(path)
    data = np.asarray(pickle_field(path, d, "data"))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise CorruptDataError(
            f"{path}: 'data' should be uint8 (N, 3072), found {data.dtype} {data.shape}; "
            f"{_REDOWNLOAD}"
        )
    out = [data.reshape(-1, 3, 32, 32)]
    for key in label_keys:
        labels = np.asarray(pickle_field(path, d, key), dtype=np.int64)
        if labels.shape != (data.shape[0],):
            raise CorruptDataError(
                f"{path}: {data.shape[0]} images but {labels.size} {key!r}; {_REDOWNLOAD}"
            )
        out.append(labels)
    return tuple(out)


def check_labels(path: Path, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Raise CorruptDataError unless all labels lie in ``0 .. num_classes-1``."""
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise CorruptDataError(
            f"{path}: labels range {labels.min()}..{labels.max()}, expected 0..{num_classes - 1}; "
            f"{_REDOWNLOAD}"
        )
    return labels


# --------------------------------------------------------------------------- .mat (SVHN)


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an SVHN cropped-digits file (``train_32x32.mat``...), a MATLAB v5 file.

    ``X`` is uint8 (32, 32, 3, N) (height, width, channel, image); ``y`` is (N, 1) with labels
    1..10, where 10 stands for the digit 0. Returns images (N, 3, 32, 32) and labels 0..9.
    Needs scipy (imported here only): ``pip install 'bioplausible[mat]'``.
    """
    try:
        from scipy.io import loadmat
    except ImportError as exc:
        raise DataError(
            f"reading {path.name} needs scipy, which is not installed: "
            "pip install 'bioplausible[mat]'"
        ) from exc
    try:
        mat = loadmat(str(path), variable_names=("X", "y"))
    except Exception as exc:  # scipy raises ValueError, TypeError, OSError... on bad files
        raise CorruptDataError(
            f"{path}: unreadable .mat file ({type(exc).__name__}: {exc}); {_REDOWNLOAD}"
        ) from exc
    x, y = mat.get("X"), mat.get("y")
    if x is None or y is None:
        raise CorruptDataError(f"{path}: .mat file lacks the variables X and y; {_REDOWNLOAD}")
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise CorruptDataError(
            f"{path}: X should be uint8 (32, 32, 3, N), found {x.dtype} {x.shape}; {_REDOWNLOAD}"
        )
    labels = np.asarray(y).reshape(-1).astype(np.int64)
    if labels.size != x.shape[3] or (labels.size and (labels.min() < 1 or labels.max() > 10)):
        raise CorruptDataError(f"{path}: y should hold {x.shape[3]} labels in 1..10; {_REDOWNLOAD}")
    return x.transpose(3, 2, 0, 1), labels % 10


# --------------------------------------------------------------------------- STL-10 binaries

STL10_SIDE = 96


def read_stl10(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read STL-10 ``*_X.bin`` / ``*_y.bin`` (uint8, no header).

    Each image is 3 x 96 x 96 bytes: the red, green and blue planes in turn, each plane stored
    column-major (MATLAB order). Reading row-major as (N, 3, 96, 96) therefore gives
    (N, C, W, H), and the last two axes are swapped. Labels are bytes 1..10, mapped to 0..9.
    """
    per_image = 3 * STL10_SIDE * STL10_SIDE
    data = np.fromfile(images_path, dtype=np.uint8)
    if data.size == 0 or data.size % per_image:
        raise CorruptDataError(
            f"{images_path}: {data.size} bytes is not a whole number of 3x96x96 images "
            f"(truncated?); {_REDOWNLOAD}"
        )
    images = data.reshape(-1, 3, STL10_SIDE, STL10_SIDE).transpose(0, 1, 3, 2)
    labels = np.fromfile(labels_path, dtype=np.uint8).astype(np.int64)
    if labels.size != images.shape[0]:
        raise CorruptDataError(
            f"{labels_path}: {labels.size} labels for {images.shape[0]} images in "
            f"{images_path.name}; {_REDOWNLOAD}"
        )
    if labels.size and (labels.min() < 1 or labels.max() > 10):
        raise CorruptDataError(f"{labels_path}: labels should be 1..10; {_REDOWNLOAD}")
    return images, labels - 1


# --------------------------------------------------------------------------- .npz (MedMNIST)

MEDMNIST_KEYS = tuple(f"{s}_{k}" for s in ("train", "val", "test") for k in ("images", "labels"))


def read_medmnist(path: Path, size: int) -> dict[str, np.ndarray]:
    """Read a MedMNIST ``.npz`` (opened with ``allow_pickle=False``).

    Keys ``{train,val,test}_{images,labels}``; images are uint8 (N, size, size) for grey or
    (N, size, size, 3) for RGB and are returned as (N, C, size, size); labels are (N, 1)
    class indices or (N, K) 0/1 multi-label targets and are returned unchanged.
    """
    import zipfile

    bad = (zipfile.BadZipFile, ValueError, OSError, EOFError, zlib.error)
    out: dict[str, np.ndarray] = {}
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise CorruptDataError(f"{path}: a single .npy array, not an .npz; {_REDOWNLOAD}")
        with npz:
            missing = [k for k in MEDMNIST_KEYS if k not in npz.files]
            if missing:
                raise CorruptDataError(f"{path}: missing arrays {missing}; {_REDOWNLOAD}")
            for key in MEDMNIST_KEYS:
                out[key] = npz[key]
    except bad as exc:
        raise CorruptDataError(
            f"{path}: unreadable .npz ({type(exc).__name__}: {exc}); {_REDOWNLOAD}"
        ) from exc
    for split in ("train", "val", "test"):
        x, y = out[f"{split}_images"], out[f"{split}_labels"]
        if x.ndim == 3:
            x = x[:, None]
        elif x.ndim == 4 and x.shape[3] in (1, 3):
            x = x.transpose(0, 3, 1, 2)
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[2:] != (size, size):
            raise CorruptDataError(
                f"{path}: {split}_images should be uint8 {size}x{size} images, found "
                f"{out[f'{split}_images'].dtype} {out[f'{split}_images'].shape}; {_REDOWNLOAD}"
            )
        if y.shape[0] != x.shape[0]:
            raise CorruptDataError(
                f"{path}: {y.shape[0]} {split}_labels for {x.shape[0]} images; {_REDOWNLOAD}"
            )
        out[f"{split}_images"] = x
        out[f"{split}_labels"] = y.reshape(len(y), -1)
    return out
