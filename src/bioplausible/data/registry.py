"""The dataset registry: one :class:`DatasetSpec` per dataset, the only place to add one.

A spec says which files a dataset needs (relative to the data root, with accepted
alternatives such as ``x.gz`` or ``x``), where each file comes from (:class:`Remote`: URL,
checksum, whether it is an archive), which dataset-specific options it accepts, and the
function that reads the files into :class:`~bioplausible.data.core.RawData`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._registry import Registry
from ..errors import ConfigError
from .core import RawData
from .download import Remote


@dataclass(frozen=True)
class FileSpec:
    """One file a loader reads.

    ``key`` is the name the loader uses; ``paths`` are the accepted locations relative to the
    root, preferred (downloaded) form first; ``remote`` is where it comes from (several files
    may share one archive); ``optional`` files are used when present and never required.
    """

    key: str
    paths: tuple[str, ...]
    remote: Remote | None = None
    optional: bool = False


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the library knows about one dataset.

    ``files(options)`` lists the :class:`FileSpec` needed for the given options; ``load(paths,
    options)`` gets {key: existing path} and returns raw uint8 arrays. ``options`` maps the
    accepted dataset-specific keyword options of :func:`~bioplausible.data.load_dataset` to
    their defaults. ``folder`` is the sub-folder of the root that holds the files.
    """

    name: str
    folder: str
    files: Callable[[dict[str, Any]], list[FileSpec]]
    load: Callable[[dict[str, Path], dict[str, Any]], RawData]
    options: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    check_options: Callable[[dict[str, Any]], None] | None = None

    def resolve_options(self, given: dict[str, Any]) -> dict[str, Any]:
        """Defaults updated with ``given``; unknown keys raise :class:`ConfigError`."""
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            known = ", ".join(sorted(self.options)) or "none"
            raise ConfigError(
                f"dataset {self.name!r} has no option {', '.join(map(repr, unknown))} "
                f"(its options: {known})"
            )
        opts = {**self.options, **given}
        if self.check_options is not None:
            self.check_options(opts)
        return opts


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register(spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec`` to :data:`DATASETS` under its name."""
    return DATASETS.add(spec.name, spec)


def get_spec(name: str) -> DatasetSpec:
    """The spec registered as ``name`` (case-insensitive, ``_`` read as ``-``)."""
    return DATASETS.get(str(name).lower().replace("_", "-"))


def fixed(*files: FileSpec) -> Callable[[dict[str, Any]], list[FileSpec]]:
    """A ``files`` callable for datasets whose files do not depend on options."""
    return lambda _options: list(files)
