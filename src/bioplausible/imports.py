"""Objects named by import path, ``pkg.module:name`` — the user's own models and datasets.

The module is imported the usual way (``sys.path``, so ``PYTHONPATH``); when it is not found
there, the working directory is searched last, so ``bioplausible compare --model
mypkg.nets:build_net`` works from the folder that holds ``mypkg`` as ``python -m`` would.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from .errors import UnknownNameError


def _import(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        cwd = os.getcwd()
        missing = exc.name or ""
        ours = module_name == missing or module_name.startswith(missing + ".")
        if not ours or cwd in sys.path or "" in sys.path:
            raise
        sys.path.append(cwd)  # last: never shadows an installed package
        try:
            return importlib.import_module(module_name)
        except ModuleNotFoundError:
            sys.path.remove(cwd)
            raise exc from None


def resolve(spec: str, what: str) -> Any:
    """The object ``pkg.module:attr[.attr]`` names; one-line UnknownNameError when it does not exist.

    ``what`` names the kind of thing in the message (``model``, ``dataset``).
    """
    module_name, _, attr = spec.split(",", 1)[0].strip().partition(":")
    try:
        obj: Any = _import(module_name)
    except ImportError as exc:
        raise UnknownNameError(f"{what} {spec!r}: cannot import {module_name!r} ({exc}); is its folder "
                               f"on PYTHONPATH or the working directory?") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UnknownNameError(f"{what} {spec!r}: module {module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    return obj


__all__ = ["resolve"]
