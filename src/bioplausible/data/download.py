"""Downloading with checksum verification, atomic writes and safe archive extraction.

* :func:`download` streams a URL (``urllib`` only) to ``<dest>.<pid>.part`` while hashing it
  (md5 and sha256) and showing a tqdm progress bar, checks the byte count against
  ``Content-Length`` and the digest against the known checksum, and only then renames the
  part file into place with :func:`os.replace`. On any failure the part file is removed.
* :func:`safe_extract` checks *every* member of a tar archive before writing anything:
  absolute names, ``..`` components, symbolic/hard links and device files are refused.
  Files are written into a temporary folder inside the root and then renamed into place.
* The base URL can be replaced for all datasets with ``$BIOPLAUSIBLE_MIRROR`` (or the
  ``mirror=`` argument): the file is then fetched from ``<mirror>/<file name>``.
* A small manifest, ``<root>/.bioplausible/<dataset>.json``, records what was downloaded
  and its digests so that :func:`bioplausible.data.verify` can re-check those files later.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import posixpath
import shutil
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import CorruptDataError, MissingDataError

MIRROR_ENV = "BIOPLAUSIBLE_MIRROR"
CHUNK = 1 << 20


@dataclass(frozen=True)
class Remote:
    """A file published upstream: its canonical URL, checksum(s) and size in bytes.

    ``archive=True`` marks a tar(.gz) that is extracted into the data root and then removed.
    """

    url: str
    md5: str | None = None
    sha256: str | None = None
    size: int | None = None
    archive: bool = False

    @property
    def filename(self) -> str:
        return posixpath.basename(urllib.parse.urlsplit(self.url).path)


def remote_url(remote: Remote, mirror: str | None = None) -> str:
    """The URL to fetch: ``<mirror>/<file name>`` when a mirror is set, else the canonical one."""
    base = mirror if mirror is not None else os.environ.get(MIRROR_ENV, "")
    return f"{base.rstrip('/')}/{remote.filename}" if base else remote.url


def file_digests(path: Path) -> dict[str, str]:
    """md5 and sha256 of a file, computed in one pass."""
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            md5.update(chunk)
            sha.update(chunk)
    return {"md5": md5.hexdigest(), "sha256": sha.hexdigest()}


def checksum_problem(remote: Remote, digests: dict[str, str]) -> str | None:
    """A description of the mismatch between ``digests`` and the remote's known checksum."""
    for kind in ("sha256", "md5"):
        want = getattr(remote, kind)
        if want and digests[kind] != want.lower():
            return f"{kind} {digests[kind]} does not match the published {want}"
    return None


def _progress(total: int | None, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=desc,
        leave=False,
        disable=None if enabled else True,
    )


def download(
    remote: Remote,
    dest: Path,
    *,
    mirror: str | None = None,
    timeout: float = 60.0,
    progress: bool = True,
) -> dict[str, str]:
    """Download ``remote`` to ``dest`` atomically and verify it; returns its digests.

    Raises :class:`MissingDataError` when the server cannot be reached or answers with an
    error status, and :class:`CorruptDataError` when the transfer is truncated or the
    checksum does not match. In both cases nothing is left at ``dest`` or beside it.
    """
    url = remote_url(remote, mirror)
    dest = Path(dest)
    part = dest.with_name(f"{dest.name}.{os.getpid()}.part")
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    try:
        try:
            response = urllib.request.urlopen(url, timeout=timeout)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise MissingDataError(f"could not download {url}: {reason}") from exc
        with response:
            # Folders are created only once the server answers: an offline attempt leaves nothing.
            dest.parent.mkdir(parents=True, exist_ok=True)
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            got = 0
            with open(part, "wb") as out, _progress(total, remote.filename, progress) as bar:
                while True:
                    try:
                        chunk = response.read(CHUNK)
                    except (http.client.HTTPException, OSError) as exc:
                        raise CorruptDataError(
                            f"download of {url} broke off after {got} bytes ({exc}); try again"
                        ) from exc
                    if not chunk:
                        break
                    out.write(chunk)
                    md5.update(chunk)
                    sha.update(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
        if total is not None and got != total:
            raise CorruptDataError(
                f"download of {url} is truncated: got {got} of {total} bytes; try again"
            )
        digests = {"md5": md5.hexdigest(), "sha256": sha.hexdigest()}
        problem = checksum_problem(remote, digests)
        if problem:
            raise CorruptDataError(
                f"download of {url} failed verification ({problem}); nothing was kept, "
                "try again or check the mirror"
            )
        os.replace(part, dest)
        return digests
    finally:
        part.unlink(missing_ok=True)


def _unsafe_reason(member: tarfile.TarInfo) -> str | None:
    name = member.name.replace("\\", "/")
    if not name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "has an absolute path"
    if ".." in name.split("/"):
        return "contains '..'"
    if member.issym() or member.islnk():
        return f"is a link to {member.linkname!r}"
    if not (member.isfile() or member.isdir()):
        return "is not a regular file or folder"
    return None


def safe_extract(archive: Path, root: Path) -> dict[str, str]:
    """Extract the tar ``archive`` into ``root``; returns {relative path: sha256} of its files.

    The whole member list is checked first; if any member is unsafe (see module docstring)
    the archive is refused with :class:`CorruptDataError` and nothing is written.
    """
    archive, root = Path(archive), Path(root)
    tmp = root / f".extract-{archive.name}-{os.getpid()}"
    written: dict[str, str] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                reason = _unsafe_reason(m)
                if reason:
                    raise CorruptDataError(
                        f"{archive}: archive member {m.name!r} {reason}; refusing to extract "
                        "anything from it (delete it and download it again)"
                    )
            tmp.mkdir(parents=True, exist_ok=True)
            for m in members:
                if not m.isfile():
                    continue
                rel = posixpath.normpath(m.name.replace("\\", "/"))
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                sha = hashlib.sha256()
                src = tar.extractfile(m)
                assert src is not None
                with src, open(target, "wb") as out:
                    while chunk := src.read(CHUNK):
                        out.write(chunk)
                        sha.update(chunk)
                written[rel] = sha.hexdigest()
        for rel in written:
            final = root / rel
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / rel, final)
        return written
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise CorruptDataError(
            f"{archive}: unreadable archive ({exc}); delete it and download it again"
        ) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- manifest


def manifest_path(root: Path, name: str) -> Path:
    return Path(root) / ".bioplausible" / f"{name}.json"


def read_manifest(root: Path, name: str) -> dict[str, dict[str, str]]:
    """{relative path: {"sha256", "md5"?, "url"}} of files this library downloaded."""
    path = manifest_path(root, name)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data.get("files", {}) if isinstance(data, dict) else {}


def record_download(root: Path, name: str, entries: dict[str, dict[str, str]]) -> None:
    """Merge ``entries`` into the dataset's manifest (written atomically)."""
    path = manifest_path(root, name)
    files = read_manifest(root, name)
    files.update(entries)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
    tmp.write_text(json.dumps({"files": files}, indent=1, sort_keys=True))
    os.replace(tmp, path)
