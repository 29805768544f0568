"""Standard PyTorch data as the bundle the trainer consumes: :func:`as_bundle`.

Accepted for training data (and, except bundles, for evaluation data):

* a :class:`DataBundle` (returned unchanged when no evaluation data is given);
* ``(X, y)`` tensors or NumPy arrays with the same first dimension;
* a ``torch.utils.data.TensorDataset`` (its two tensors, used like ``(X, y)``);
* any other map-style ``Dataset`` (``__getitem__`` and ``__len__``) returning ``(x, y)``
  samples, batched with ``default_collate``;
* a ``DataLoader`` yielding ``(x, y)`` batches;
* a dict ``{"train": ..., "test": ..., "val": ...}`` of the above (only ``train`` required).

How each trains, and what ``resume`` then guarantees:

* tensors, ``TensorDataset`` and map-style datasets are batched by the trainer with the
  config's ``batch_size`` and shuffled with its seeded per-epoch generator, exactly like the
  built-in datasets: a resumed run computes the same thing as an uninterrupted one;
* a ``DataLoader`` is used as it is: its batch size, sampler, workers and shuffling are the
  user's (the config's ``batch_size`` is ignored). Each batch moves to the model's device and
  dtype (floating-point inputs and targets; integer targets keep their type). A resumed run
  restores torch's global random state at the epoch boundary, so a loader that shuffles with
  the default sampler and no ``generator`` of its own draws the same order again and resume
  is exact; a loader with its own ``generator`` (or any state of its own) continues from
  wherever that state is, and resume then guarantees only that training restarts at the
  right epoch with the right model, optimizer, schedule and rule state.

The task is ``multiclass`` unless ``task="multilabel"`` is given or can be read off float
``(N, K)`` targets of zeros and ones that are not one-hot (tensors and ``TensorDataset``
only; a loader or a generic dataset is not read ahead). Without evaluation data the bundle's
``test`` is ``None`` and the trainer evaluates nothing per epoch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate

from ..errors import ConfigError
from .core import DataBundle, DatasetInfo, Split

ACCEPTED = ("a DataLoader yielding (x, y) batches, a map-style Dataset of (x, y) samples, "
            "a TensorDataset, (X, y) tensors or arrays, a DataBundle from load_dataset, or a dict "
            "{'train': ..., 'test': ..., 'val': ...} of these")
SPLIT_NAMES = ("train", "test", "val")


def _move(t: Any, device, dtype: torch.dtype | None) -> Any:
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(np.asarray(t))
    return t.to(device=device, dtype=dtype if (dtype is not None and t.is_floating_point()) else None,
                non_blocking=True)


def _pair(batch: Any, where: str) -> tuple[Any, Any]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    got = f"{type(batch).__name__} of length {len(batch)}" if isinstance(batch, (tuple, list)) \
        else type(batch).__name__
    raise TypeError(f"{where} must give (inputs, targets) pairs, got a {got}")


class LoaderSplit:
    """A split backed by a ``DataLoader``: its batches, moved to a device and dtype.

    ``batches`` ignores ``batch_size``, ``shuffle`` and ``generator`` (the loader decides);
    ``len`` is the number of examples (``len(loader.dataset)``, else batches × batch size);
    ``y`` reads every target once (the trainer needs it only for multi-label AUC).
    """

    def __init__(self, loader: DataLoader, device=None, dtype: torch.dtype | None = None) -> None:
        self.loader, self.device, self.dtype = loader, device, dtype

    def to(self, device=None, dtype: torch.dtype | None = None) -> LoaderSplit:
        return LoaderSplit(self.loader, device, dtype)

    def __len__(self) -> int:
        try:
            return len(self.loader.dataset)  # type: ignore[arg-type]
        except TypeError:
            try:
                return len(self.loader) * int(self.loader.batch_size or 1)
            except TypeError:
                return 0

    def batches(self, batch_size: int | None = None, shuffle: bool = False,
                generator: torch.Generator | None = None,
                drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.loader:
            x, y = _pair(batch, "the DataLoader")
            yield _move(x, self.device, self.dtype), _move(y, self.device, self.dtype)

    @property
    def y(self) -> torch.Tensor:
        return torch.cat([y for _, y in self.batches()])


class DatasetSplit(LoaderSplit):
    """A map-style ``Dataset`` batched by the trainer (its batch size, its seeded shuffle)."""

    def __init__(self, dataset: Dataset, device=None, dtype: torch.dtype | None = None) -> None:
        super().__init__(DataLoader(dataset, batch_size=1), device, dtype)
        self.dataset = dataset

    def to(self, device=None, dtype: torch.dtype | None = None) -> DatasetSplit:
        return DatasetSplit(self.dataset, device, dtype)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def batches(self, batch_size: int | None = 256, shuffle: bool = False,
                generator: torch.Generator | None = None,
                drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, bs = len(self), int(batch_size or 256)
        if bs < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        order = torch.randperm(n, generator=generator).tolist() if shuffle else range(n)
        stop = (n // bs) * bs if drop_last else n
        for i in range(0, stop, bs):
            samples = [_pair(self.dataset[j], "the Dataset") for j in order[i : i + bs]]
            x, y = default_collate(samples)
            yield _move(x, self.device, self.dtype), _move(y, self.device, self.dtype)


def _tensor(a: Any, what: str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a
    if isinstance(a, np.ndarray):
        if a.dtype == object:
            raise TypeError(f"{what} is a NumPy array of Python objects; give a numeric array")
        return torch.from_numpy(np.ascontiguousarray(a))
    raise TypeError(f"{what} must be a tensor or a NumPy array, got {type(a).__name__}")


def _is_source(obj: Any) -> bool:
    return isinstance(obj, (DataLoader, Dataset))


def _split(obj: Any, role: str) -> Split | LoaderSplit:
    """One split from any accepted form (bundles and dicts are handled by the caller)."""
    if isinstance(obj, DataLoader):
        return LoaderSplit(obj)
    if isinstance(obj, TensorDataset) and len(obj.tensors) == 2:
        return _xy(obj.tensors[0], obj.tensors[1], role)
    if isinstance(obj, Dataset):
        if not hasattr(obj, "__len__"):
            raise TypeError(f"the {role} Dataset has no __len__ (an IterableDataset?); wrap it in a "
                            f"DataLoader, which is used as it is")
        return DatasetSplit(obj)
    if isinstance(obj, (tuple, list)) and len(obj) == 2 and not any(map(_is_source, obj)):
        return _xy(obj[0], obj[1], role)
    hint = ""
    if isinstance(obj, (tuple, list)) and any(map(_is_source, obj)):
        hint = " (give evaluation data separately: fit(model, rule, train, test) or a dict)"
    raise TypeError(f"cannot use {_describe(obj)} as {role} data{hint}; accepted: {ACCEPTED}")


def _xy(x: Any, y: Any, role: str) -> Split:
    x, y = _tensor(x, f"{role} X"), _tensor(y, f"{role} y")
    if x.dim() < 1 or len(x) != len(y):
        raise ConfigError(f"{role} data: X has {len(x) if x.dim() else 0} rows but y has {len(y)}; "
                          f"they must have the same first dimension")
    from ..errors import DataError

    if len(x) == 0:
        raise DataError(f"{role} data is empty (X has 0 rows); it needs at least one example")
    for name, t in (("X", x), ("y", y)):
        if t.is_complex():
            raise DataError(f"{role} {name} is complex ({t.dtype}); give real numbers")
        if t.is_floating_point():
            bad = ~torch.isfinite(t)
            if bool(bad.any()):
                index = tuple(int(i) for i in torch.nonzero(bad)[0])
                raise DataError(f"{role} {name} holds {float(t[index])} at index "
                                f"{index[0] if len(index) == 1 else index}; data must be finite numbers")
    return Split(x, y)


def _describe(obj: Any) -> str:
    if isinstance(obj, (tuple, list)):
        return f"a {type(obj).__name__} of {len(obj)} ({', '.join(type(o).__name__ for o in obj)})"
    return f"a {type(obj).__name__}"


def _infer_task(split: Split | LoaderSplit) -> str:
    if not isinstance(split, Split):
        return "multiclass"
    y = split.y
    if y.is_floating_point() and y.dim() == 2 and y.numel():
        binary = bool(((y == 0) | (y == 1)).all())
        if binary and not bool((y.sum(dim=1) == 1).all()):
            return "multilabel"
    return "multiclass"


def _num_classes(split: Split | LoaderSplit, task: str) -> int:
    if not isinstance(split, Split):
        return 0  # unknown without reading the loader; the trainer does not need it
    y = split.y
    if y.dim() == 2:
        return int(y.shape[1])
    return int(y.max()) + 1 if y.numel() and not y.is_floating_point() else 0


def as_bundle(data: Any, eval_data: Any = None, *, task: str | None = None,
              name: str = "custom") -> Any:
    """Turn ``data`` (and optional ``eval_data``) into the bundle :class:`~bioplausible.Trainer` uses.

    ``data``: any form listed in the module docstring. ``eval_data``: one of them (evaluated
    as ``test``) or a dict with keys ``test`` and/or ``val``. ``task``: ``"multiclass"``,
    ``"multilabel"`` (default: read off tensor targets, else multiclass) or ``"reconstruction"``
    (targets = the flattened inputs; given targets are kept as ``split.labels``). Anything else is a
    :class:`TypeError` naming what is accepted.
    """
    if task == "reconstruction":  # targets = the inputs (an autoencoder); see .reconstruction
        from .reconstruction import as_reconstruction

        return as_reconstruction(as_bundle(data, eval_data, name=name))
    if task is not None and task not in ("multiclass", "multilabel"):
        raise ConfigError(f"task must be 'multiclass', 'multilabel' or 'reconstruction', got {task!r}")
    if isinstance(data, DataBundle) or (
            hasattr(data, "train") and hasattr(data, "test") and hasattr(data, "info")):
        if eval_data is None and task is None:
            return data
        raise ConfigError("a DataBundle already holds its test/val splits and task; pass it alone")
    if isinstance(data, dict):
        unknown = sorted(set(data) - set(SPLIT_NAMES))
        if unknown or "train" not in data:
            raise ConfigError(f"a data dict needs the key 'train' and may have 'test' and 'val'; "
                              f"got keys {sorted(data)}")
        if eval_data is not None:
            raise ConfigError("give evaluation data either in the data dict or as eval_data, not both")
        parts = dict(data)
    else:
        parts = {"train": data}
        if isinstance(eval_data, dict):
            unknown = sorted(set(eval_data) - {"test", "val"})
            if unknown:
                raise ConfigError(f"eval_data dict keys must be 'test' and/or 'val'; got {unknown}")
            parts.update(eval_data)
        elif eval_data is not None:
            parts["test"] = eval_data
    splits = {k: _split(v, k) for k, v in parts.items() if v is not None}
    train = splits["train"]
    task = task or _infer_task(train)
    x0 = train.x if isinstance(train, Split) else None
    info = DatasetInfo(name=name, input_shape=tuple(int(d) for d in x0.shape[1:]) if x0 is not None else (),
                       num_classes=_num_classes(train, task), task=task)
    return DataBundle(train=train, test=splits.get("test"), val=splits.get("val"),  # type: ignore[arg-type]
                      info=info)


__all__ = ["ACCEPTED", "DatasetSplit", "LoaderSplit", "as_bundle"]
