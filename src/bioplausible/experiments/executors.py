"""Executors of a sweep: this process, spawned local processes, or Ray tasks.

Each executor takes the jobs still to run and calls ``on_event(kind, index, result)`` with
``kind`` ``"start"`` or ``"end"``; a job's own failure comes back as a result (see
:func:`execute`), never as an exception.

Local workers are spawned processes with one torch thread each; on Linux each asks the kernel to
kill it when the sweep's process dies (``PR_SET_PDEATHSIG``), so a killed sweep leaves no worker
behind writing a run directory; elsewhere a re-launch waits on the run's lock instead.

Ray: ``address="local"`` starts a private Ray instance on this machine (loopback addresses, no
dashboard, ``num_cpus`` = the number of jobs); ``"auto"`` or ``"HOST:PORT"`` joins a running
cluster, whose nodes must see the sweep's ``out`` folder at the same path (a shared filesystem)
and have bioplausible installed. If Ray is already initialised in this process it is used as is.
"""

from __future__ import annotations

import json
import os
import queue as queue_mod
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .._io import atomic_write_json
from ..engine.rundir import LOCK_NAME
from ..errors import UserError
from .jobs import Job

Event = Callable[[str, int, dict[str, Any]], None]
_EVENTS: Any = None


def run_inline(jobs: Sequence[tuple[int, dict[str, Any]]], on_event: Event) -> None:
    for index, data in jobs:
        on_event("start", index, {})
        on_event("end", index, execute(data, worker=False))


def _die_with_parent() -> None:
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def _init_worker(events: Any, parent: int) -> None:
    global _EVENTS
    _EVENTS = events
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _task(index: int, data: dict[str, Any]) -> dict[str, Any]:
    if _EVENTS is not None:
        _EVENTS.put(index)
    return execute(data, worker=True)


def run_local(jobs: Sequence[tuple[int, dict[str, Any]]], workers: int, on_event: Event) -> None:
    """``workers`` spawned processes, one torch thread each."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = multiprocessing.get_context("spawn")
    events = ctx.Queue()
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx, initializer=_init_worker,
                             initargs=(events, os.getpid())) as pool:
        futures = {pool.submit(_task, index, data): index for index, data in jobs}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            _drain(events, on_event)
            for fut in done:
                on_event("end", futures[fut], fut.result())
        _drain(events, on_event)


def _drain(events: Any, on_event: Event) -> None:
    while True:
        try:
            index = events.get_nowait()
        except (queue_mod.Empty, OSError, ValueError):
            return
        on_event("start", index, {})


def _ray_task(data: dict[str, Any]) -> dict[str, Any]:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    return execute(data, worker=True)


def check_address(address: str | None, timeout: float = 5.0) -> None:
    """``--address`` names something Ray can join: ``local``/``auto``, or ``[ray://]HOST:PORT`` where a
    TCP connection succeeds within ``timeout`` seconds. Anything else is a one-line UserError here,
    before any job runs (``ray.init`` itself retries an unreachable address without end)."""
    import socket

    if address in (None, "local", "auto"):
        return
    text = str(address)
    hostport = text.removeprefix("ray://")
    host, sep, port_text = hostport.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UserError(f"--address {text!r}: use local (a private instance), auto (the running cluster) or "
                        f"HOST:PORT of a cluster's head node, e.g. 10.0.0.5:6379")
    try:
        with socket.create_connection((host, int(port_text)), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(f"--address {text!r}: no Ray cluster answers there ({reason}); start one with "
                        f"`ray start --head` on that machine, or use --address local") from None


def run_ray(jobs: Sequence[tuple[int, dict[str, Any]]], workers: int, address: str | None,
            on_event: Event) -> None:
    """The jobs as Ray tasks (one CPU each) on a local instance or a cluster."""
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'bioplausible[sweep]' (or pip install ray)") from None
    started = False
    if not ray.is_initialized():
        env = {k: os.environ[k] for k in ("BIOPLAUSIBLE_DATA", "BIOPLAUSIBLE_THREADS") if k in os.environ}
        if address in (None, "local"):
            ray.init(num_cpus=workers, include_dashboard=False, _node_ip_address="127.0.0.1",
                     log_to_driver=False, runtime_env={"env_vars": env} if env else None)
        else:
            check_address(address)
            try:
                ray.init(address=address, log_to_driver=False, runtime_env={"env_vars": env} if env else None)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                first = (" ".join(str(exc).split()) or type(exc).__name__)[:200]
                raise UserError(f"--address {address!r}: cannot join a Ray cluster ({first})") from None
        started = True
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(_ray_task)
        refs = {}
        for index, data in jobs:
            refs[task.remote(data)] = index
        pending = list(refs)
        cpus = max(1, int(ray.available_resources().get("CPU", workers) or workers))
        for index in [refs[r] for r in pending[:cpus]]:
            on_event("start", index, {})
        announced = set(pending[:cpus])
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            for ref in done:
                try:
                    result = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a worker crash: recorded like a run that raised
                    result = {"status": "failed", "message": f"ray task failed: {type(exc).__name__}",
                              "seconds": 0.0, "skipped": False}
                if ref not in announced:
                    on_event("start", refs[ref], {})
                on_event("end", refs[ref], result)
            for ref in pending[:cpus]:  # ray runs them in submission order, as CPUs free up
                if ref not in announced:
                    announced.add(ref)
                    on_event("start", refs[ref], {})
    finally:
        if started:
            ray.shutdown()


FINAL = ("completed", "diverged")


# ----------------------------------------------------------------------------- state of a run
def run_state(run_dir: str | os.PathLike) -> str:
    """``new`` (nothing there), ``partial`` (started, not finished) or the finished run's status."""
    p = Path(run_dir)
    if not p.is_dir() or not any(x.name != LOCK_NAME for x in p.iterdir()):
        return "new"
    s = p / "summary.json"
    if s.is_file():
        try:
            summary = json.loads(s.read_text())
        except (OSError, ValueError):
            return "partial"
        if isinstance(summary, dict) and summary.get("job") is not None:
            return str(summary.get("status"))
    return "partial"


def record_failure(job: Job, exc: BaseException) -> dict[str, Any]:
    run_dir = Path(job.run_dir)
    message = " ".join(f"{type(exc).__name__}: {exc}".split())
    summary = {"status": "failed", "message": message, "rule": job.config.get("rule", {}).get("name"),
               "job": {"label": job.label, "seed": job.seed, "preset": job.preset, "scale": job.scale}}
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "error.json", {"type": type(exc).__name__, "message": str(exc),
                                                   "traceback": traceback.format_exc()})
        atomic_write_json(run_dir / "summary.json", summary)
    except OSError as err:
        from ..errors import StorageError

        raise StorageError(f"run {str(run_dir)!r} failed ({message[:120]}) and its error record cannot be "
                           f"written: {err.strerror}; the finished runs are intact: free space and run the "
                           f"same command again") from None
    return summary


def _wait_for_writer(run_dir: Path) -> None:
    """Block while another process (a worker of a killed sweep) still writes ``run_dir``."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        return
    lock = run_dir / LOCK_NAME
    if not lock.exists():
        return
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    finally:
        os.close(fd)


def execute(job_data: dict[str, Any], worker: bool = True) -> dict[str, Any]:
    """Run one sweep job (a :func:`~bioplausible.experiments.jobs.job_dict`) and never raise for its failure.

    Returns ``{"status", "message", "seconds"}``; a finished run found on disk is not run again.
    """
    from .jobs import run_job

    job = Job(**job_data)
    start = time.time()
    run_dir = Path(job.run_dir)
    _wait_for_writer(run_dir)
    state = run_state(run_dir)
    if state in FINAL:
        return {"status": state, "message": "already finished", "seconds": 0.0, "skipped": True}
    for name in ("error.json", "summary.json"):
        (run_dir / name).unlink(missing_ok=True)
    job.resume = run_dir.is_dir()
    try:
        summary = run_job(job, progress=False, worker=worker)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - a failed run is recorded, the sweep goes on
        summary = record_failure(job, exc)
    return {"status": summary.get("status"), "message": summary.get("message", ""),
            "seconds": time.time() - start, "skipped": False}
