"""The run directory: its lock, its checkpoint file and its ``metrics.jsonl``.

A run directory has one writer at a time: :func:`run_lock` holds an ``flock`` on
``<run_dir>/.lock`` while a run trains (the kernel drops it when the process dies, so a killed
run leaves nothing stuck).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import UserError

LOCK_NAME = ".lock"


def before_checkpoint(record: dict[str, Any], epoch: int, step: int) -> bool:
    """Whether a metrics line describes training up to the checkpoint (epoch ``epoch``, step ``step``)."""
    if record.get("kind") == "probe":
        return int(record.get("step", 0)) <= step
    return int(record.get("epoch", 0)) <= epoch


def check_run_dir(run_dir: Path, resume: bool = False) -> None:
    """``run_dir`` can be used: not a file, not inside a file, empty unless resuming."""
    for parent in [run_dir, *run_dir.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"run directory {str(run_dir)!r}: {str(parent)!r} is a file; choose another --out")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UserError(f"run directory {str(run_dir)!r}: {str(parent)!r} is not writable; "
                                f"choose another --out")
            break
    if not resume and run_dir.is_dir() and any(p.name != LOCK_NAME for p in run_dir.iterdir()):
        raise UserError(f"run directory {str(run_dir)!r} already exists and is not empty; choose another "
                        f"--out or use --resume")


# ----------------------------------------------------------------------------- run
@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``<run_dir>/.lock`` exclusively; a second writer gets a UserError in one line."""
    path = run_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock, one writer is the user's job
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                raise UserError(f"run directory {str(run_dir)!r} is being written by another run (pid "
                                f"{holder}); wait for it to finish or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``.

    A torn last line (what a kill during an append leaves) is dropped; a damaged line before
    the last is a UserError in one line.
    """
    p = Path(path)
    try:
        lines = p.read_text(errors="replace").splitlines()
    except OSError as exc:
        raise UserError(f"{str(p)!r} cannot be read: {exc.strerror}") from None
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        if not isinstance(rec, dict):
            if i == len(lines) - 1:
                break  # torn last line
            raise UserError(f"{str(p)!r} line {i + 1} is damaged (not a JSON record); the run directory "
                            f"was edited or corrupted")
        records.append(rec)
    return records
