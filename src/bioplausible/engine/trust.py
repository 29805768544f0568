"""Files never make bioplausible import code on their own: the import-path models and datasets a
config read from a file names are refused unless the user passes ``--trust-imports``
(``trust_imports=True`` in Python) in this invocation."""

from __future__ import annotations

from typing import Any

from ..data.custom import is_custom
from ..imports import UntrustedImportError
from ..models.custom import is_import_spec


def file_imports(config: Any) -> list[tuple[str, str]]:
    """``[(key, spec)]``: the import-path model and dataset a config (mapping or TrainConfig) names.

    Exactly what :func:`bioplausible.models.build_model` and :func:`bioplausible.load_dataset` would
    import; built-in names, ``mlp:...`` specs and ``npz:PATH`` are not imports.
    """
    data = config.to_dict() if hasattr(config, "to_dict") else config
    if not isinstance(data, dict):
        return []
    found = []
    model, dataset = data.get("model"), data.get("dataset")
    spec = model.get("spec") if isinstance(model, dict) else model
    if is_import_spec(spec):
        found.append(("model.spec", spec))
    name = dataset.get("name") if isinstance(dataset, dict) else dataset
    if isinstance(name, str) and is_custom(name) and not name.startswith("npz:"):
        found.append(("dataset.name", name))
    return found


def refuse_file_imports(config: Any, source: str, trust_imports: bool = False) -> None:
    """One-line :class:`UntrustedImportError` when ``config``, read from ``source`` (a file), names
    code to import and ``trust_imports`` is false."""
    if trust_imports:
        return
    found = file_imports(config)
    if found:
        key, spec = found[0]
        raise UntrustedImportError(
            f"{source} names code to import ({key}: {spec!r}); a file never makes bioplausible import "
            f"code on its own: if you trust it, pass --trust-imports (trust_imports=True in Python)")


__all__ = ["file_imports", "refuse_file_imports"]
