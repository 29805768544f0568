"""Objects named by import path, ``pkg.module:name`` — the user's own models and datasets.

The module is imported the usual way, from ``sys.path`` (so ``PYTHONPATH``). The working
directory is never added to the import path: a folder someone else wrote (a downloaded run)
must not be able to supply a module by sitting there; run with ``PYTHONPATH=.`` to use one.

Files the tool reads (a ``--config`` file, a run folder's ``config.yaml``, a preset or a sweep
file) never make it import anything on their own: :func:`bioplausible.engine.trust.refuse_file_imports` refuses a config
from such a file that names an import-path model or dataset unless the caller passed
``trust_imports=True`` (``--trust-imports`` on the command line), as ``trust_remote_code`` does.
A ``--model pkg.module:factory`` typed on the command line, or a spec written in Python, is the
user's own request and is imported without that flag.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import UnknownNameError, UserError


class UntrustedImportError(UserError):
    """A file names code to import (a model or dataset by import path) and it was not allowed."""


def _import(module_name: str) -> Any:
    return importlib.import_module(module_name)


def resolve(spec: str, what: str) -> Any:
    """The object ``pkg.module:attr[.attr]`` names; one-line UnknownNameError when it does not exist.

    ``what`` names the kind of thing in the message (``model``, ``dataset``).
    """
    module_name, _, attr = spec.split(",", 1)[0].strip().partition(":")
    try:
        obj: Any = _import(module_name)
    except ImportError as exc:
        raise UnknownNameError(f"{what} {spec!r}: cannot import {module_name!r} ({exc}); is its folder "
                               f"on PYTHONPATH? (the working directory is not searched: run with "
                               f"PYTHONPATH=. to import from it)") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UnknownNameError(f"{what} {spec!r}: module {module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    return obj


__all__ = ["UntrustedImportError", "resolve"]
