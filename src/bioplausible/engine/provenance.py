"""What a run really trained: the model object and the data as given (for config.yaml/summary.json).

A run started from Python (:func:`bioplausible.fit`) trains the user's own module on the user's
own data; the config's ``model.spec`` and ``dataset`` defaults say nothing about either, so the
run directory records instead:

* the model: its class and import path, ``repr``, parameter count and a structural
  fingerprint (:func:`model_fingerprint`: a hash of the module tree's names and classes and of
  every parameter's and buffer's name, shape and dtype — the same for two instances of one
  architecture, different when a layer, a width or a dtype differs; the values are not in it);
* the data: how it was given (a dataset name with the options it was loaded with, a
  ``DataBundle``, a ``DataLoader``, tensors, ...) and the sizes of the train, validation and test
  splits, never options the run did not use.
"""

from __future__ import annotations

import hashlib
from typing import Any

from torch import nn


def import_path(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def model_fingerprint(model: nn.Module) -> str:
    """16 hex digits of a SHA-256 over the module tree and the parameter/buffer shapes and dtypes."""
    h = hashlib.sha256()
    for name, module in model.named_modules():
        h.update(f"m {name} {import_path(module)}\n".encode())
    for kind, items in (("p", model.named_parameters()), ("b", model.named_buffers())):
        for name, t in items:
            h.update(f"{kind} {name} {tuple(t.shape)} {t.dtype}\n".encode())
    return h.hexdigest()[:16]


def describe_model(model: nn.Module) -> dict[str, Any]:
    """``{"class", "import_path", "parameters", "fingerprint", "repr"}`` of the module as given."""
    return {"class": type(model).__name__, "import_path": import_path(model),
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "fingerprint": model_fingerprint(model), "repr": repr(model)}


def split_sizes(train: Any, val: Any = None, test: Any = None) -> dict[str, int | None]:
    """Examples in each split (``None``: the split is absent)."""
    def size(split: Any) -> int | None:
        if split is None:
            return None
        try:
            return len(split)
        except TypeError:
            return None
    return {"train": size(train), "val": size(val), "test": size(test)}


def describe_data(given: Any, bundle: Any, load_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """How the data was given to :func:`bioplausible.fit`, and what it became."""
    from torch.utils.data import DataLoader, Dataset

    info = getattr(bundle, "info", None)
    out: dict[str, Any] = {"name": str(getattr(info, "name", "custom"))}
    if isinstance(given, str):
        out["given_as"] = "dataset name"
        out.update({k: v for k, v in (load_options or {}).items() if v is not None})
    elif hasattr(given, "train") and hasattr(given, "info"):
        out["given_as"] = "DataBundle"
        if getattr(info, "mean", None) is not None:  # standardised by load_dataset with these stats
            out["standardized_with"] = {"mean": list(info.mean), "std": list(info.std)}
    elif isinstance(given, DataLoader):
        out["given_as"] = "DataLoader"
    elif isinstance(given, Dataset):
        out["given_as"] = import_path(given)
    elif isinstance(given, dict):
        out["given_as"] = "dict of splits: " + ", ".join(sorted(given))
    elif isinstance(given, (tuple, list)):
        out["given_as"] = "tensors (X, y)"
    else:
        out["given_as"] = import_path(given)
    if getattr(info, "input_shape", None):
        out["input_shape"] = list(info.input_shape)
    out["sizes"] = split_sizes(bundle.train, getattr(bundle, "val", None), getattr(bundle, "test", None))
    return out


__all__ = ["describe_data", "describe_model", "import_path", "model_fingerprint", "split_sizes"]
