"""Small file helpers every layer uses: atomic writes, PNG figures without a display, YAML.

A file written with :func:`atomic_write_text`, :func:`atomic_write_json` or
:func:`atomic_torch_save` is written beside its destination and moved into place with
:func:`os.replace`, so a reader (or a run killed mid-write) sees the old file or the new one,
never half of one.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import yaml


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:  # the old file stays as it was; no half-written temporary is left
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON (``str`` for what JSON cannot hold) atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=str))


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save(obj, path)`` atomically."""
    import torch

    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:  # the old file stays as it was; no half-written temporary is left
        tmp.unlink(missing_ok=True)
        raise


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (PNG files, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


class _Loader(yaml.SafeLoader):
    """Safe YAML loader that also reads ``1e-4`` as a float (YAML 1.2 behaviour)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def yaml_load(text: str) -> Any:
    """``yaml.safe_load`` that also reads ``1e-4`` as a float."""
    return yaml.load(text, Loader=_Loader)


__all__ = ["atomic_torch_save", "atomic_write_json", "atomic_write_text", "pyplot", "yaml_load"]
