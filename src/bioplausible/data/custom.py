"""The user's own datasets by name: ``npz:PATH`` and ``pkg.module:callable``.

``load_dataset`` (and so every config, ``fit`` and the CLI's ``--dataset``) accepts

* ``npz:PATH`` — a NumPy ``.npz`` file with arrays ``x_train``, ``y_train``, ``x_test``,
  ``y_test`` and optionally ``x_val``, ``y_val``. It is read with ``allow_pickle=False``:
  nothing stored in the file is ever executed; an array of Python objects is refused.
  A relative ``PATH`` is looked up in the working directory, then under the data root.
* ``pkg.module:callable`` — ``callable(**options)`` (the dataset options of the config are
  its keyword arguments) returns one of: a dict of the arrays above; a dict
  ``{"train": ..., "test": ..., "val": ...}``; a tuple ``(train, test)`` or
  ``(train, test, val)``; each split an ``(X, y)`` pair of tensors/arrays or a map-style
  ``Dataset`` of ``(x, y)`` samples (read once into memory).

The same options as the built-in sets apply, in the same order (see :mod:`.core`):
``val_size`` (the last examples of the training split), ``subset`` (first ``N`` training
examples; test and validation stay whole), ``normalize``, ``flatten``, ``one_hot``,
``device``, ``dtype``. ``normalize="standardize"`` uses the training split's statistics: per
channel (dimension 1) for inputs ``(N, C, ...)``, per feature for ``(N, D)``;
``"unit"`` divides uint8 inputs by 255 and accepts other inputs only when already in
[0, 1]; ``"none"`` keeps the values. Targets: integer class indices ``(N,)`` (multiclass,
``num_classes = max + 1``) or ``(N, K)`` arrays of zeros and ones (multi-label unless every
row is one-hot, which is read as class indices).
"""

from __future__ import annotations

import re
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, CorruptDataError, DataError, MissingDataError
from .core import DataBundle, DatasetInfo, Split, as_dtype, check_args, resolve_root

REQUIRED = ("x_train", "y_train", "x_test", "y_test")
OPTIONAL = ("x_val", "y_val")
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
Pair = tuple[np.ndarray, np.ndarray]


def is_custom(name: Any) -> bool:
    """True for ``npz:PATH`` and ``pkg.module:callable`` names."""
    return isinstance(name, str) and (name.startswith("npz:") or bool(_IMPORT_PATH.match(name)))


def run_label(name: str) -> str:
    """A dataset name fit for a run directory name: ``npz:/data/my set.npz`` -> ``npz-my_set``,
    ``pkg.data:load`` -> ``pkg.data-load``; built-in names are returned unchanged."""
    if not is_custom(name):
        return name
    if name.startswith("npz:"):
        name = "npz-" + Path(name[len("npz:"):]).stem
    return re.sub(r"[^\w.+-]", "_", name.replace(":", "-"))


def absolute_name(name: Any, root=None) -> Any:
    """``npz:REL`` -> ``npz:/abs/REL`` (the file found now: working directory, then data root), so a
    run records which file it trained on; other names, and a file not found, are returned as they are."""
    if not (isinstance(name, str) and name.startswith("npz:")) or Path(name[4:]).expanduser().is_absolute():
        return name
    try:
        return "npz:" + str(_npz_path(name, root).resolve())
    except (DataError, ConfigError, OSError):
        return name


def fingerprint(name: Any, root=None) -> dict[str, Any] | None:
    """``{"file", "bytes", "sha256"}`` of an ``npz:PATH`` dataset's file (None for other datasets,
    whose files carry their own checksums)."""
    import hashlib

    if not (isinstance(name, str) and name.startswith("npz:")):
        return None
    path = _npz_path(name, root).resolve()
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return {"file": str(path), "bytes": path.stat().st_size, "sha256": sha.hexdigest()}


# ----------------------------------------------------------------------------- reading
def _npz_path(name: str, root) -> Path:
    raw = name[len("npz:"):]
    if not raw:
        raise ConfigError("npz: needs a file path, e.g. --dataset npz:data/my_set.npz")
    path = Path(raw).expanduser()
    candidates = [path] if path.is_absolute() else [path, resolve_root(root) / path]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        where = " or ".join(str(p) for p in candidates)
        raise MissingDataError(f"dataset {name!r}: no file {where}")
    return found


def read_npz(name: str, root=None) -> dict[str, np.ndarray]:
    """The arrays of an ``npz:PATH`` dataset, read without unpickling anything."""
    path = _npz_path(name, root)
    save = "save it with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"
    if not zipfile.is_zipfile(path):  # checked first: np.load would offer to unpickle it
        with open(path, "rb") as f:
            single = f.read(6) == b"\x93NUMPY"
        what = "a single .npy array" if single else "not an .npz file (a zip of .npy arrays)"
        raise CorruptDataError(f"dataset {name!r}: {path} is {what}; {save}")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CorruptDataError(f"dataset {name!r}: {path} is not a readable .npz file ({exc}); "
                               f"{save}") from None
    with archive:
        keys = set(archive.files)
        _check_keys(name, keys)
        arrays = {}
        for key in REQUIRED + OPTIONAL:
            if key not in keys:
                continue
            _check_member(name, path, key)
            try:
                arrays[key] = archive[key]
            except (ValueError, EOFError, OSError, zipfile.BadZipFile, zlib.error) as exc:
                raise CorruptDataError(f"dataset {name!r}: array {key!r} in {path} cannot be read "
                                       f"({' '.join(str(exc).split())[:120]}); the file is truncated or "
                                       f"corrupt: {save}") from None
    return arrays


def _check_member(name: str, path: Path, key: str) -> None:
    """Read the ``.npy`` header of member ``key`` before its data: an object array (pickles) is
    refused, and a header declaring more bytes than the member holds (a truncated member, or a
    huge shape that would exhaust memory) is a CorruptDataError, all without allocating it."""
    fmt = np.lib.format
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(key + ".npy")
            with zf.open(info) as f:
                version = fmt.read_magic(f)
                read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                shape, _, dtype = read(f)
                header = f.tell()
    except KeyError:  # stored without the .npy suffix: numpy reads it as is
        return
    except (ValueError, EOFError, OSError, zipfile.BadZipFile, zlib.error) as exc:
        raise CorruptDataError(f"dataset {name!r}: array {key!r} in {path} has no readable .npy header "
                               f"({' '.join(str(exc).split())[:120]}); the file is truncated or corrupt") from None
    if dtype.hasobject:
        raise DataError(f"dataset {name!r}: array {key!r} holds pickled Python objects, which are never "
                        f"loaded (allow_pickle=False); save it as a numeric array")
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    held = info.file_size - header
    if declared > held:
        raise CorruptDataError(f"dataset {name!r}: array {key!r} in {path} declares shape {tuple(shape)} of "
                               f"{dtype} ({declared:,} bytes) but holds {held:,} bytes; the file is truncated "
                               f"or corrupt")


def _check_keys(name: str, keys: set[str]) -> None:
    missing = [k for k in REQUIRED if k not in keys]
    half = [k for k in OPTIONAL if k not in keys] if any(k in keys for k in OPTIONAL) else []
    if missing or half:
        need = ", ".join(missing + half)
        raise DataError(f"dataset {name!r} has no array {need}; it needs x_train, y_train, x_test, "
                        f"y_test (optionally x_val with y_val); found: {', '.join(sorted(keys)) or 'none'}")


def _resolve(name: str) -> Any:
    from ..imports import resolve

    obj = resolve(name, "dataset")
    if not callable(obj):
        raise ConfigError(f"dataset {name!r}: {name.partition(':')[2]!r} is a {type(obj).__name__}, "
                          f"not a callable")
    return obj


def _as_arrays(name: str, split: str, obj: Any) -> Pair:
    from torch.utils.data import Dataset, TensorDataset, default_collate

    if isinstance(obj, TensorDataset) and len(obj.tensors) == 2:
        obj = obj.tensors
    elif isinstance(obj, Dataset):
        try:
            obj = default_collate([tuple(obj[i]) for i in range(len(obj))])  # type: ignore[arg-type]
        except (TypeError, RuntimeError, ValueError) as exc:
            raise DataError(f"dataset {name!r}: cannot stack the {split} Dataset's (x, y) samples "
                            f"into arrays ({exc})") from None
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
        raise DataError(f"dataset {name!r}: the {split} split is a {type(obj).__name__}; give an "
                        f"(X, y) pair of tensors or arrays, or a Dataset of (x, y) samples")
    return tuple(_numeric(name, f"{split} {w}", a) for w, a in zip("Xy", obj))  # type: ignore[return-value]


def _numeric(name: str, what: str, a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    a = np.asarray(a)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise DataError(f"dataset {name!r}: {what} has dtype {a.dtype}; give numbers")
    if np.iscomplexobj(a):  # training on the real part would silently drop half the data
        raise DataError(f"dataset {name!r}: {what} is complex ({a.dtype}); give real numbers (take .real, "
                        f"abs() or stack both parts yourself)")
    return a


def _check_finite(name: str, what: str, a: np.ndarray) -> None:
    """NaN or inf anywhere in ``a`` is a DataError naming the array and the first bad index."""
    if a.dtype.kind not in "fc" or a.size == 0:
        return
    bad = ~np.isfinite(a)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DataError(f"dataset {name!r}: {what} holds {a[index]} at index {index[0] if len(index) == 1 else index} "
                        f"({int(bad.sum())} non-finite values); data must be finite numbers: clean or drop "
                        f"those rows")


def call_loader(name: str, options: dict[str, Any]) -> dict[str, Pair]:
    """Run ``pkg.module:callable(**options)`` and return its splits as NumPy pairs."""
    fn = _resolve(name)
    try:
        out = fn(**options)
    except TypeError as exc:
        if options:
            raise ConfigError(f"dataset {name!r} does not take options {sorted(options)}: {exc}") from None
        raise
    if isinstance(out, dict) and set(out) & set(REQUIRED):
        _check_keys(name, set(out))
        return {s: _as_arrays(name, s, (out[f"x_{s}"], out[f"y_{s}"]))
                for s in ("train", "test", "val") if f"x_{s}" in out}
    if isinstance(out, dict) and "train" in out and "test" in out and set(out) <= {"train", "test", "val"}:
        return {s: _as_arrays(name, s, v) for s, v in out.items() if v is not None}
    if isinstance(out, (tuple, list)) and len(out) in (2, 3) and not all(
            isinstance(v, (np.ndarray, torch.Tensor)) for v in out):
        return {s: _as_arrays(name, s, v) for s, v in zip(("train", "test", "val"), out)}
    raise DataError(f"dataset {name!r} returned a {type(out).__name__}; return (train, test[, val]) or "
                    f"a dict {{'train', 'test'[, 'val']}} of (X, y) pairs or Datasets, or a dict of "
                    f"arrays x_train, y_train, x_test, y_test")


# ----------------------------------------------------------------------------- preprocessing
def _task(name: str, ys: list[np.ndarray]) -> tuple[str, int]:
    y = ys[0]
    if y.ndim == 2:
        binary = all(np.isin(v, (0, 1)).all() for v in ys)
        if not binary:
            raise DataError(f"dataset {name!r}: 2-D targets must hold zeros and ones (multi-label "
                            f"or one-hot); give class indices (N,) otherwise")
        one_hot = all((v.sum(axis=1) == 1).all() for v in ys)
        return ("multiclass" if one_hot else "multilabel"), int(y.shape[1])
    if y.ndim != 1:
        raise DataError(f"dataset {name!r}: targets must be class indices (N,) or 0/1 arrays (N, K); "
                        f"got shape {y.shape}")
    if not all(np.array_equal(v, np.round(v)) and (v.size == 0 or v.min() >= 0) for v in ys):
        raise DataError(f"dataset {name!r}: class indices must be integers >= 0")
    return "multiclass", int(max(int(v.max()) for v in ys if v.size)) + 1


def _labels(y: np.ndarray, task: str, num_classes: int, one_hot: bool, dtype) -> torch.Tensor:
    if task == "multilabel":
        return torch.from_numpy(np.asarray(y, dtype=np.float64)).to(dtype)
    idx = torch.from_numpy(np.asarray(y.argmax(axis=1) if y.ndim == 2 else y, dtype=np.int64))
    return torch.nn.functional.one_hot(idx, num_classes).to(dtype) if one_hot else idx


def _stats(name: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """Mean and std of the training inputs: per channel (dim 1) for ndim >= 3, per feature else."""
    if x.ndim < 2:
        raise DataError(f"dataset {name!r}: inputs must have shape (N, ...) with a feature axis; "
                        f"got {x.shape}")
    axes = (0,) if x.ndim == 2 else (0, *range(2, x.ndim))
    wide = x.astype(np.float64)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return wide.mean(axis=axes).reshape(shape), wide.std(axis=axes).reshape(shape), axes


def assemble_arrays(name: str, splits: dict[str, Pair], *, normalize: str = "standardize",
                    flatten: bool = False, val_size: int = 0, one_hot: bool = False, device=None,
                    dtype: torch.dtype | None = torch.float32, subset: int | None = None) -> DataBundle:
    """The steps of :func:`bioplausible.data.core.assemble` for numeric arrays of any shape."""
    check_args(normalize=normalize, val_size=val_size, dtype=dtype, subset=subset)
    dtype = as_dtype(dtype) or torch.float32
    for s, (x, y) in splits.items():
        if len(x) != len(y):
            raise DataError(f"dataset {name!r}: x_{s} has {len(x)} rows but y_{s} has {len(y)}")
        _check_finite(name, f"x_{s}", x)
        _check_finite(name, f"y_{s}", y)
    shapes = {s: x.shape[1:] for s, (x, _) in splits.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(f"dataset {name!r}: the splits' inputs differ in shape: {shapes}")
    train, test, val = splits["train"], splits["test"], splits.get("val")
    if val_size:
        if val is not None:
            raise ConfigError(f"{name} ships its own validation split; leave val_size at 0")
        n = len(train[0])
        if val_size >= n:
            raise ConfigError(f"val_size={val_size} leaves no training data "
                              f"({name} has {n} training examples)")
        val = (train[0][n - val_size:], train[1][n - val_size:])
        train = (train[0][: n - val_size], train[1][: n - val_size])
    if subset is not None:  # training data only: validation and test stay whole
        train = (train[0][:subset], train[1][:subset])
    parts = {"train": train, "test": test, **({"val": val} if val is not None else {})}
    for s, (x, _) in parts.items():
        if len(x) == 0:
            raise DataError(f"dataset {name!r}: the {s} split is empty (x_{s} has 0 rows); it needs at "
                            f"least one example")
    task, num_classes = _task(name, [y for _, y in parts.values()])
    mean = std = None
    if normalize == "standardize":
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported below, in one line
            mean, std, _ = _stats(name, train[0])
        if not (np.isfinite(mean).all() and np.isfinite(std).all()):
            big = float(np.abs(train[0]).max())
            raise DataError(f"dataset {name!r}: x_train values up to {big:g} are too large to standardise "
                            f"(their variance overflows float64); rescale the data")
    elif normalize == "unit" and train[0].dtype != np.uint8:
        lo = min(float(x.min()) for x, _ in parts.values())
        hi = max(float(x.max()) for x, _ in parts.values())
        if lo < 0 or hi > 1:
            raise ConfigError(f"dataset {name!r}: normalize='unit' divides uint8 inputs by 255; these are "
                              f"{train[0].dtype} in [{lo:g}, {hi:g}]: use standardize or none")

    def split(pair: Pair, which: str) -> Split:
        x = np.asarray(pair[0], dtype=np.float64)
        if normalize == "standardize":
            with np.errstate(over="ignore", invalid="ignore"):
                x = (x - mean) / np.maximum(std, 1e-8)
        elif normalize == "unit" and pair[0].dtype == np.uint8:
            x = x / 255.0
        t = torch.from_numpy(np.ascontiguousarray(x)).to(dtype)
        if not torch.isfinite(t).all():  # finite in float64, not in the training dtype
            index = tuple(int(i) for i in torch.nonzero(~torch.isfinite(t))[0])
            raise DataError(f"dataset {name!r}: x_{which} value {float(x[index]):g} at index "
                            f"{index[0] if len(index) == 1 else index} is beyond the range of {dtype} "
                            f"(after normalize={normalize!r}); rescale the data"
                            + ("" if normalize == "standardize" else " or use normalize=standardize"))
        if normalize == "per_image":
            from .core import per_image_standardize

            t = per_image_standardize(t)
        if flatten:
            t = t.reshape(t.shape[0], -1)
        s = Split(t, _labels(pair[1], task, num_classes, one_hot, dtype))
        return s.to(device=device) if device is not None else s

    shape = tuple(int(d) for d in train[0].shape[1:])
    info = DatasetInfo(name=name, input_shape=(int(np.prod(shape)),) if flatten else shape,
                       num_classes=num_classes, task=task,
                       mean=tuple(float(m) for m in mean.ravel()) if mean is not None else None,
                       std=tuple(float(s) for s in std.ravel()) if std is not None else None)
    return DataBundle(train=split(train, "train"), test=split(test, "test"),
                      val=split(val, "val") if val is not None else None, info=info)


def load_custom(name: str, root=None, *, normalize: str = "standardize", flatten: bool = False,
                val_size: int = 0, one_hot: bool = False, device=None,
                dtype: torch.dtype | None = torch.float32, subset: int | None = None,
                **options: Any) -> DataBundle:
    """Load an ``npz:PATH`` or ``pkg.module:callable`` dataset (see the module docstring)."""
    check_args(normalize=normalize, val_size=val_size, dtype=dtype, subset=subset)
    options.pop("download", None)
    options.pop("mirror", None)
    if name.startswith("npz:"):
        if options:
            raise ConfigError(f"dataset {name!r} takes no options; got {', '.join(sorted(options))}")
        arrays = read_npz(name, root)
        splits = {s: (arrays[f"x_{s}"], arrays[f"y_{s}"]) for s in ("train", "test", "val")
                  if f"x_{s}" in arrays}
        splits = {s: (_numeric(name, f"x_{s}", x), _numeric(name, f"y_{s}", y))
                  for s, (x, y) in splits.items()}
    else:
        splits = call_loader(name, options)
    return assemble_arrays(name, splits, normalize=normalize, flatten=flatten, val_size=val_size,
                           one_hot=one_hot, device=device, dtype=dtype, subset=subset)


__all__ = ["OPTIONAL", "REQUIRED", "assemble_arrays", "call_loader", "is_custom", "load_custom", "read_npz",
           "run_label"]
