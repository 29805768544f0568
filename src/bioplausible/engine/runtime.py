"""Process settings for one run: torch threads, determinism, denormal flushing, the device.

``flush_denormal: true`` (default false) makes the CPU flush subnormal floats to zero
(``torch.set_flush_denormal``): GEMMs over weights or errors that decay towards zero can run
several times faster, but results change slightly (values below ~1e-38 in float32 become 0).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from ..errors import ConfigError
from .config import TrainConfig

THREADS_ENV = "BIOPLAUSIBLE_THREADS"
MALLOC_ENV = "BIOPLAUSIBLE_MALLOC"

#: glibc's ``mallopt`` parameters (malloc.h) and the values :func:`keep_freed_memory` sets
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_TRIM_BYTES, _MMAP_BYTES, _MMAP_BYTES_MIN = 1 << 30, 256 << 20, 32 << 20
_malloc_kept: bool | None = None


def check_device(name: str) -> None:
    """The device exists here (``cuda:3`` on a one-GPU machine is a ConfigError)."""
    import torch

    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but CUDA is not available here; use --device cpu")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed blocks for the next step instead of returning them to the
    kernel; ``True`` if the setting is in force in this process.

    A training step allocates and frees the same tensors every step. glibc serves a block above its
    mmap threshold with a fresh ``mmap`` (unmapped on free) and returns the free top of its heap to
    the kernel beyond its trim threshold, so every step touches new zero-filled pages: a stacked
    SAL step (8 runs, 784-200-200-200-10, batch 256) took about 6,500 minor page faults and 100 ms
    on one thread, against about 14 faults and 56 ms with the blocks kept. This raises
    the mmap threshold to 256 MiB and the trim threshold to 1 GiB (``mallopt``), once per process;
    a process's memory then stays at its peak rather than shrinking after it. Only where the C
    library is glibc; ``BIOPLAUSIBLE_MALLOC=system`` leaves the allocator as it is. The CLI and
    stacked runs call it; results do not change, only the time.
    """
    global _malloc_kept
    if _malloc_kept is not None:
        return _malloc_kept
    _malloc_kept = False
    if os.environ.get(MALLOC_ENV, "").strip().lower() == "system":
        return False
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mmap_ok = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_BYTES) or libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_BYTES_MIN)
        _malloc_kept = bool(mmap_ok and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_BYTES))
    except (OSError, AttributeError):
        pass
    return _malloc_kept


def _threads_from_env() -> int | None:
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        return None
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"{THREADS_ENV}={raw!r} must be a positive integer (torch threads per run)")
    return n


@contextlib.contextmanager
def runtime(config: TrainConfig, worker: bool = False) -> Iterator[None]:
    """Threads, determinism and denormal flushing for one run; the previous settings come back after."""
    import torch

    threads = _threads_from_env() or (1 if worker else None)
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark)
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        if config["deterministic"]:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        if config["flush_denormal"] and not torch.set_flush_denormal(True):
            raise ConfigError("flush_denormal: this CPU cannot flush denormals (needs SSE3); set it to false")
        yield
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1], warn_only=before[2])
        torch.backends.cudnn.benchmark = before[3]
        if config["flush_denormal"]:
            torch.set_flush_denormal(False)
