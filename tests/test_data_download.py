"""Downloading against a real HTTP server on 127.0.0.1: checksums, truncation, unsafe tars.

The server is ``http.server`` in a thread on port 0; the library is pointed at it with the
``mirror=`` option (or ``$BIOPLAUSIBLE_MIRROR``). Upstream checksums are swapped for the
checksums of the test's own files where a download is expected to succeed.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import io
import pickle
import socket
import struct
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from bioplausible.data import DATASETS, dataset_status, fetch, load_dataset, verify
from bioplausible.data.download import Remote, safe_extract
from bioplausible.data.registry import fixed, get_spec
from bioplausible.errors import CorruptDataError, MissingDataError

MNIST_STEMS = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


def idx_gz(arr: np.ndarray) -> bytes:
    head = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return gzip.compress(head + arr.astype(np.uint8).tobytes())


def mnist_files() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    out = {}
    for prefix, n in (("train", 12), ("t10k", 6)):
        out[f"{prefix}-images-idx3-ubyte.gz"] = idx_gz(rng.integers(0, 256, (n, 28, 28)))
        out[f"{prefix}-labels-idx1-ubyte.gz"] = idx_gz(np.arange(n) % 10)
    return out


def cifar_tar(extra: list[tuple[str, bytes]] = (), batches: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        members = []
        if batches:
            for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
                data = np.full((2, 3072), 7, dtype=np.uint8)
                blob = pickle.dumps({b"data": data, b"labels": [1, 2]}, protocol=2)
                members.append((f"cifar-10-batches-py/{name}", blob))
        for name, blob in members + list(extra):
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        name = self.path.lstrip("/").split("?")[0]
        body = self.server.files.get(name)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if name in self.server.short else body)
        self.server.hits.append(name)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.short, httpd.hits = {}, set(), []
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    monkeypatch.delenv("BIOPLAUSIBLE_MIRROR", raising=False)
    httpd.url = f"http://127.0.0.1:{httpd.server_port}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def trust(monkeypatch, name: str, checksums: dict[str, str]) -> None:
    """Replace the published md5 of ``name``'s remotes by the test files' md5 (by file name)."""
    spec = get_spec(name)
    files = []
    for f in spec.files({}):
        r = f.remote
        if r is not None and r.filename in checksums:
            r = dataclasses.replace(r, md5=checksums[r.filename], size=None)
        files.append(dataclasses.replace(f, remote=r))
    monkeypatch.setitem(DATASETS._items, spec.name, dataclasses.replace(spec, files=fixed(*files)))


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_download_verifies_and_loads(tmp_path, server, monkeypatch):
    server.files = mnist_files()
    trust(monkeypatch, "mnist", {k: md5(v) for k, v in server.files.items()})
    root = tmp_path / "data"
    b = load_dataset("mnist", root, mirror=server.url, normalize="none")
    assert len(b.train) == 12 and len(b.test) == 6
    assert sorted(server.hits) == sorted(server.files)
    assert not list(root.rglob("*.part"))
    for name, blob in server.files.items():
        assert (root / "mnist" / name).read_bytes() == blob
    assert verify("mnist", root) == []
    status = dataset_status("mnist", root)
    assert status["present"] and status["download_bytes"] == 0
    load_dataset("mnist", root, mirror=server.url)  # present now: no second download
    assert len(server.hits) == 4
    path = root / "mnist" / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()), mtime=1))
    assert any("t10k-labels" in p and "recorded" in p for p in verify("mnist", root))


def test_mirror_from_environment(tmp_path, server, monkeypatch):
    server.files = mnist_files()
    trust(monkeypatch, "mnist", {k: md5(v) for k, v in server.files.items()})
    monkeypatch.setenv("BIOPLAUSIBLE_MIRROR", server.url + "/")
    fetch("mnist", tmp_path)
    assert dataset_status("mnist", tmp_path)["present"]


def test_bad_checksum_leaves_nothing_behind(tmp_path, server):
    server.files = mnist_files()  # genuine upstream md5s cannot match these files
    with pytest.raises(CorruptDataError) as err:
        load_dataset("mnist", tmp_path, mirror=server.url)
    msg = str(err.value)
    assert "md5" in msg and "train-images-idx3-ubyte.gz" in msg and "\n" not in msg
    assert leftovers(tmp_path) == []


def test_truncated_transfer_is_refused(tmp_path, server, monkeypatch):
    server.files = mnist_files()
    trust(monkeypatch, "mnist", {k: md5(v) for k, v in server.files.items()})
    server.short = {"train-labels-idx1-ubyte.gz"}
    with pytest.raises(CorruptDataError, match="truncated"):
        load_dataset("mnist", tmp_path, mirror=server.url)
    assert "mnist/train-labels-idx1-ubyte.gz" not in leftovers(tmp_path)
    assert not any(p.endswith(".part") for p in leftovers(tmp_path))


def test_short_file_with_wrong_checksum_is_refused(tmp_path, server, monkeypatch):
    files = mnist_files()
    trust(monkeypatch, "mnist", {k: md5(v) for k, v in files.items()})
    server.files = {**files, "t10k-images-idx3-ubyte.gz": files["t10k-images-idx3-ubyte.gz"][:50]}
    with pytest.raises(CorruptDataError, match="t10k-images"):
        load_dataset("mnist", tmp_path, mirror=server.url)
    assert "mnist/t10k-images-idx3-ubyte.gz" not in leftovers(tmp_path)


def test_unreachable_server_gives_guidance(tmp_path, monkeypatch):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there any more
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with pytest.raises(MissingDataError) as err:
        load_dataset("mnist", tmp_path, mirror=f"http://127.0.0.1:{port}")
    msg = str(err.value)
    assert "BIOPLAUSIBLE_DATA" in msg and "could not download" in msg and "\n" not in msg
    assert str(tmp_path / "mnist") in msg
    assert leftovers(tmp_path) == []


def test_http_error_gives_missing_data(tmp_path, server):
    with pytest.raises(MissingDataError, match="Not Found|404"):
        load_dataset("mnist", tmp_path, mirror=server.url)


def test_cifar_archive_is_downloaded_extracted_and_removed(tmp_path, server, monkeypatch):
    blob = cifar_tar()
    server.files = {"cifar-10-python.tar.gz": blob}
    trust(monkeypatch, "cifar10", {"cifar-10-python.tar.gz": md5(blob)})
    b = load_dataset("cifar10", tmp_path, mirror=server.url, normalize="none")
    assert len(b.train) == 10 and float(b.train.x.mean()) == 7.0
    assert b.train.y.tolist() == [1, 2] * 5
    assert not (tmp_path / "cifar-10-python.tar.gz").exists()
    assert not any(p.startswith(".extract") for p in leftovers(tmp_path))
    assert verify("cifar10", tmp_path) == []
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"garbage")
    problems = verify("cifar10", tmp_path)
    assert any("test_batch" in p and "sha256" in p for p in problems)


def test_hand_placed_archive_is_used_without_network(tmp_path, monkeypatch):
    blob = cifar_tar()
    trust(monkeypatch, "cifar10", {"cifar-10-python.tar.gz": md5(blob)})
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(blob)
    b = load_dataset("cifar10", tmp_path, download=False)
    assert len(b.test) == 2


def test_tar_with_dotdot_member_is_refused(tmp_path, server, monkeypatch):
    blob = cifar_tar(extra=[("cifar-10-batches-py/../../evil.txt", b"owned")])
    server.files = {"cifar-10-python.tar.gz": blob}
    trust(monkeypatch, "cifar10", {"cifar-10-python.tar.gz": md5(blob)})
    root = tmp_path / "root"
    with pytest.raises(CorruptDataError, match=r"\.\.") as err:
        load_dataset("cifar10", root, mirror=server.url)
    assert "evil.txt" in str(err.value)
    assert not (tmp_path / "evil.txt").exists()
    assert leftovers(root) == []  # nothing extracted, archive removed


@pytest.mark.parametrize("kind", ["absolute", "symlink", "hardlink"])
def test_safe_extract_refuses_absolute_paths_and_links(tmp_path, kind):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("ok/a.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"a"))
        bad = tarfile.TarInfo("/tmp/abs.txt" if kind == "absolute" else "ok/link")
        if kind == "symlink":
            bad.type, bad.linkname = tarfile.SYMTYPE, "../../etc/passwd"
        elif kind == "hardlink":
            bad.type, bad.linkname = tarfile.LNKTYPE, "/etc/passwd"
        else:
            bad.size = 1
        tar.addfile(bad, io.BytesIO(b"b") if kind == "absolute" else None)
    archive = tmp_path / "x.tar"
    archive.write_bytes(buf.getvalue())
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(CorruptDataError, match="refusing"):
        safe_extract(archive, root)
    assert leftovers(root) == []


def test_remote_filename_and_status_sizes(tmp_path):
    r = Remote("https://zenodo.org/records/1/files/x.npz?download=1")
    assert r.filename == "x.npz"
    status = dataset_status("cifar10", tmp_path)
    assert status["present"] is False and status["download_bytes"] == 170498071
    assert all(not f["present"] for f in status["files"])
