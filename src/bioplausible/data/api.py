"""Public entry points: load, inspect, fetch and verify datasets by name."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import CorruptDataError, DataError, MissingDataError
from .core import DataBundle, assemble, check_args, resolve_root
from .custom import is_custom, load_custom
from .download import (
    Remote,
    checksum_problem,
    download,
    file_digests,
    read_manifest,
    record_download,
    safe_extract,
)
from .registry import DATASETS, DatasetSpec, FileSpec, get_spec


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    get_spec("mnist")  # make sure the built-ins are registered
    return sorted({spec.name for _, spec in DATASETS.items()})


def _locate(files: list[FileSpec], root: Path) -> tuple[dict[str, Path], list[FileSpec]]:
    found: dict[str, Path] = {}
    missing: list[FileSpec] = []
    for f in files:
        path = next((root / p for p in f.paths if (root / p).is_file()), None)
        if path is not None:
            found[f.key] = path
        elif not f.optional:
            missing.append(f)
    return found, missing


def _display_name(f: FileSpec) -> str:
    first = Path(f.paths[0]).name
    if first.endswith(".gz") and any(Path(p).name == first[:-3] for p in f.paths[1:]):
        return f"{first[:-3]}[.gz]"
    return first


def _missing_message(
    spec: DatasetSpec, root: Path, missing: list[FileSpec], failure: str | None = None
) -> str:
    """One line: what is missing, where to put it, and how else to get it."""
    names = ", ".join(_display_name(f) for f in missing)
    archives = sorted({f.remote.filename for f in missing if f.remote and f.remote.archive})
    alt = f" (or the archive {', '.join(archives)} in {root})" if archives else ""
    tail = f"; download failed: {failure}" if failure else ", or allow download=True"
    return (
        f"dataset {spec.name!r} not found: missing {names} in {root / spec.folder}; put the "
        f"files there{alt}, or point root= or BIOPLAUSIBLE_DATA at the folder that contains "
        f"{spec.folder}/{tail}"
    )


def _obtain(spec: DatasetSpec, root: Path, f: FileSpec, mirror: str | None) -> None:
    """Download (or, for a hand-placed archive, just verify and unpack) ``f.remote``."""
    remote: Remote = f.remote  # type: ignore[assignment]
    if not remote.archive:
        digests = download(remote, root / f.paths[0], mirror=mirror)
        record_download(root, spec.name, {f.paths[0]: {**digests, "url": remote.url}})
        return
    archive = root / remote.filename
    if archive.is_file():
        problem = checksum_problem(remote, file_digests(archive))
        if problem:
            raise CorruptDataError(f"{archive}: {problem}; delete it and download it again")
    else:
        download(remote, archive, mirror=mirror)
    try:
        written = safe_extract(archive, root)
    except CorruptDataError:
        archive.unlink(missing_ok=True)
        raise
    archive.unlink(missing_ok=True)
    record_download(
        root, spec.name, {rel: {"sha256": sha, "url": remote.url} for rel, sha in written.items()}
    )


def ensure_files(
    spec: DatasetSpec,
    root: Path,
    options: dict[str, Any],
    *,
    download: bool | None = None,
    mirror: str | None = None,
) -> dict[str, Path]:
    """{key: path} of the dataset's files, downloading missing ones when allowed."""
    files = spec.files(options)
    found, missing = _locate(files, root)
    placed = {f.remote for f in missing if f.remote and f.remote.archive}
    placed = {r for r in placed if (root / r.filename).is_file()}
    for remote in placed:  # archives put there by hand: verify and unpack, no network needed
        _obtain(spec, root, next(f for f in missing if f.remote == remote), mirror)
    if placed:
        found, missing = _locate(files, root)
    if not missing:
        return found
    if download is False:
        raise MissingDataError(_missing_message(spec, root, missing))
    no_source = [f for f in missing if f.remote is None]
    if no_source:
        raise MissingDataError(_missing_message(spec, root, missing, "no download source known"))
    try:  # no folder is created here: download() makes one once a server answers
        done: set[Remote] = set()
        for f in missing:
            if f.remote not in done:
                _obtain(spec, root, f, mirror)
                done.add(f.remote)  # type: ignore[arg-type]
    except MissingDataError as exc:
        raise MissingDataError(_missing_message(spec, root, missing, str(exc))) from exc
    except OSError as exc:  # read-only root, or a file where a folder should be
        why = f"cannot write to {root}: {exc.strerror}"
        raise MissingDataError(_missing_message(spec, root, missing, why)) from exc
    found, missing = _locate(files, root)
    if missing:
        why = "the downloaded archive did not contain them"
        raise MissingDataError(_missing_message(spec, root, missing, why))
    return found


def load_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    normalize: str = "standardize",
    flatten: bool = False,
    val_size: int = 0,
    one_hot: bool = False,
    download: bool | None = None,
    device=None,
    dtype: torch.dtype = torch.float32,
    subset: int | None = None,
    task: str | None = None,
    **options: Any,
) -> DataBundle:
    """Load dataset ``name`` from the data root into memory as tensors.

    The root is :func:`resolve_root`\\ (``root``). Files missing there are downloaded from the
    canonical source and verified when ``download`` is ``True`` or ``None`` (``None``: try;
    ``False``: never); otherwise :class:`MissingDataError` says which files to put where.
    ``normalize`` is ``"standardize"`` (per channel, statistics of the training split),
    ``"unit"`` ([0, 1]), ``"none"`` (0..255 as float) or ``"per_image"`` (each image to zero mean,
    unit variance over its own values, as TensorFlow's ``per_image_standardization``). ``val_size`` moves the *last*
    ``val_size`` training examples into ``bundle.val``. ``subset=N`` keeps the first ``N``
    training examples; the test and validation splits stay whole. ``one_hot`` gives float
    ``(N, K)`` targets. ``task="reconstruction"`` makes every target the flattened input (an
    autoencoder's data; labels kept as ``split.labels``, :mod:`bioplausible.data.reconstruction`);
    ``None`` keeps the dataset's own task. Extra keyword ``options`` are dataset-specific (see
    ``DatasetSpec.options``); ``mirror=`` replaces the download base URL.

    ``name`` may also be ``npz:PATH`` or ``pkg.module:callable``, the user's own data, with the
    same options (:mod:`bioplausible.data.custom`; extra ``options`` go to the callable).
    """
    if task is not None:
        from .reconstruction import as_reconstruction, check_task

        bundle = load_dataset(name, root, normalize=normalize, flatten=flatten, val_size=val_size,
                              one_hot=one_hot, download=download, device=device, dtype=dtype,
                              subset=subset, **options)
        return as_reconstruction(bundle) if check_task(task, bundle.info.task) else bundle
    if is_custom(name):
        return load_custom(name, root, normalize=normalize, flatten=flatten, val_size=val_size,
                           one_hot=one_hot, device=device, dtype=dtype, subset=subset, **options)
    check_args(normalize=normalize, val_size=val_size, dtype=dtype, subset=subset)
    spec = get_spec(name)
    mirror = options.pop("mirror", None)
    opts = spec.resolve_options(options)
    base = resolve_root(root)
    paths = ensure_files(spec, base, opts, download=download, mirror=mirror)
    raw = spec.load(paths, opts)
    return assemble(
        spec.name,
        raw,
        normalize=normalize,
        flatten=flatten,
        val_size=val_size,
        one_hot=one_hot,
        device=device,
        dtype=dtype,
        subset=subset,
    )


def dataset_status(name: str, root: str | os.PathLike | None = None, **options: Any) -> dict:
    """Which files of ``name`` are present under the root, and how much a download would be.

    Returns ``{"name", "present", "root", "folder", "files": [{"path", "present", "bytes"}],
    "download_bytes"}``; ``download_bytes`` is the size of what :func:`fetch` would download
    (0 when nothing is missing, ``None`` when a size is unknown).
    """
    spec = get_spec(name)
    base = resolve_root(root)
    files = spec.files(spec.resolve_options(options))
    found, missing = _locate(files, base)
    rows = []
    for f in files:
        path = found.get(f.key, base / f.paths[0])
        present = f.key in found
        rows.append(
            {
                "path": str(path),
                "present": present,
                "bytes": path.stat().st_size if present else None,
            }
        )
    remotes = {f.remote for f in missing if f.remote is not None}
    sizes = [r.size for r in remotes]
    return {
        "name": spec.name,
        "present": not missing,
        "root": str(base),
        "folder": str(base / spec.folder),
        "files": rows,
        "download_bytes": None if any(s is None for s in sizes) else sum(sizes),  # type: ignore[misc]
    }


def verify(name: str, root: str | os.PathLike | None = None, **options: Any) -> list[str]:
    """Re-check the dataset's files; returns a list of problems (empty when all is well).

    Files this library downloaded are re-hashed against the digests recorded at download
    time (and, for direct downloads, the published md5). All files are then parsed with the
    dataset's loader, which detects truncated or malformed content in hand-placed files.
    """
    spec = get_spec(name)
    base = resolve_root(root)
    opts = spec.resolve_options(options)
    found, missing = _locate(spec.files(opts), base)
    problems = [f"missing {base / f.paths[0]}" for f in missing]
    for rel, entry in sorted(read_manifest(base, spec.name).items()):
        path = base / rel
        if not path.is_file():
            continue  # e.g. the user replaced the .gz by the raw file
        digests = file_digests(path)
        for kind in ("sha256", "md5"):
            if entry.get(kind) and digests[kind] != entry[kind]:
                problems.append(
                    f"{path}: {kind} {digests[kind]} differs from the {entry[kind]} recorded "
                    "at download; delete it and fetch again"
                )
                break
    if not missing:
        try:
            spec.load(found, opts)
        except DataError as exc:
            problems.append(str(exc))
    return problems


def fetch(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    mirror: str | None = None,
    **options: Any,
) -> None:
    """Download whatever ``name`` is missing under the root, then :func:`verify` it."""
    spec = get_spec(name)
    base = resolve_root(root)
    opts = spec.resolve_options(options)
    ensure_files(spec, base, opts, download=True, mirror=mirror)
    problems = verify(spec.name, base, **options)
    if problems:
        raise CorruptDataError(f"{spec.name}: " + "; ".join(problems))
