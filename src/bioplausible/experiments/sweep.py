"""Sweeps: a grid of configs x seeds run as :class:`~bioplausible.experiments.jobs.Job` s, locally or on Ray.

A sweep file (YAML) names a base (a preset or a config), a grid of dotted keys and the seeds::

    name: lr-sweep
    preset: fb-mnist-sigmoid        # or  config: {dataset: {name: mnist}, ...}  or  config: run.yaml
    scale: quick                    # presets only
    grid: {optimizer.lr: [0.001, 0.003]}
    seeds: [0, 1, 2]
    out: runs/lr-sweep              # default: runs/sweep-<name>

A preset's sweep may keep only some of its runs, each with its own seeds where given::

    runs: [ma_tf, bp_equiv]                              # these runs, at the sweep's seeds
    runs: {mb_tf: [0, 1, 2], mb_fa: null, bp_equiv: null}   # null: the sweep's seeds

Every run is a directory ``<out>/<label>-seed<seed>`` written by :func:`~bioplausible.experiments.jobs.run_job`
(its ``.lock`` held while it trains); ``<out>/sweep.json`` indexes them. A run is *finished* when
its ``summary.json`` carries the ``job`` record, which ``run_job`` writes after the model, i.e.
last: ``completed`` and ``diverged`` runs (a result of the config) are skipped on re-launch. A run
that raised is recorded as ``failed`` (``error.json`` with the traceback, and a summary with
``status: failed``); it does not stop the others and is tried again on re-launch. Any other
directory (a sweep killed mid-run) is resumed from its last epoch checkpoint (``checkpoint.pt``,
written atomically every ``checkpoint_every`` epochs), or restarted from scratch when it has none;
in both cases the trainer first drops what was written after the checkpoint.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._io import atomic_write_json
from ..errors import ConfigError, UserError
from . import executors
from .executors import FINAL, record_failure, run_state
from .jobs import (
    Job,
    _flat,
    _read_json,
    check_jobs,
    inside,
    job_dict,
    plan,
    run_dir_name,
)
from .seeds import check_seeds

INDEX = "sweep.json"
_SPEC_KEYS = {"name", "preset", "config", "scale", "grid", "seeds", "out", "overrides", "runs"}


@dataclass
class SweepSpec:
    """What a sweep file says (see the module docstring)."""

    name: str
    preset: str | None = None
    config: dict[str, Any] | None = None
    scale: str | None = None
    grid: dict[str, list[Any]] = field(default_factory=dict)
    seeds: list[int] | None = None
    out: str | None = None
    overrides: list[str] = field(default_factory=list)
    #: a preset's runs to keep, each with its own seeds or None for the sweep's (None: every run)
    runs: dict[str, list[int] | None] | None = None
    source: str | None = None  # the sweep file it was read from (None: built in Python)
    trust_imports: bool = False  # may the file (or a preset file it names) import a model or dataset?

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "preset": self.preset, "config": self.config, "scale": self.scale,
                "grid": self.grid, "seeds": self.seeds, "out": self.out, "overrides": self.overrides,
                "runs": self.runs}


def load_spec(path: str | os.PathLike, trust_imports: bool = False) -> SweepSpec:
    """A :class:`SweepSpec` from a YAML file; a malformed file is a ConfigError in one line.

    Unless ``trust_imports``, a run of the sweep that would import a model or dataset by import
    path (from the file's config, grid or preset) is refused when the sweep is planned.
    """
    import functools

    from .._io import yaml_load
    from ..engine.config import load_config

    p = Path(path)
    if not p.is_file():
        raise UserError(f"sweep file {str(p)!r} does not exist")
    try:
        raw = yaml_load(p.read_text(encoding="utf-8")) or {}
    except Exception as exc:  # noqa: BLE001 - yaml.YAMLError, UnicodeDecodeError
        raise ConfigError(f"sweep file {str(p)!r} is not valid YAML ({type(exc).__name__})") from None
    spec = spec_from_dict(raw, str(p), base_dir=p.parent,
                          load_config=functools.partial(load_config, trust_imports=trust_imports))
    spec.source, spec.trust_imports = str(p), trust_imports
    return spec


def spec_from_dict(raw: Any, source: str = "sweep", base_dir: Path | None = None,
                   load_config: Callable[..., Any] | None = None) -> SweepSpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a sweep is a mapping with preset: or config:, grid: and seeds:")
    extra = sorted(set(raw) - _SPEC_KEYS)
    if extra:
        raise ConfigError(f"{source}: unknown key {extra[0]!r}; use {', '.join(sorted(_SPEC_KEYS))}")
    if ("preset" in raw) == ("config" in raw):
        raise ConfigError(f"{source}: give exactly one of preset: (a preset name or file) or config:")
    config = raw.get("config")
    if isinstance(config, str):  # a config file, relative to the sweep file
        path = Path(config) if Path(config).is_absolute() or base_dir is None else base_dir / config
        if load_config is None:
            from ..engine.config import load_config
        config = load_config(path).explicit()  # what the file sets: rules fill in the rest
    if config is not None and not isinstance(config, dict):
        raise ConfigError(f"{source}: config must be a mapping or a YAML file name")
    preset = raw.get("preset")
    if preset is not None and not isinstance(preset, str):
        raise ConfigError(f"{source}: preset must be a preset name or a .yaml file")
    if preset and preset.endswith((".yaml", ".yml")) and base_dir is not None and not Path(preset).is_absolute():
        preset = str(base_dir / preset)
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError(f"{source}: grid must map dotted keys to non-empty lists, e.g. "
                          f"{{optimizer.lr: [0.01, 0.1]}}")
    for key in grid:
        if not isinstance(key, str) or not key.strip():
            raise ConfigError(f"{source}: grid key {key!r} is not a config key; use dotted names such as "
                              f"optimizer.lr or rule.name")
    for key in ("scale", "out", "name"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise ConfigError(f"{source}: {key} must be text (e.g. {key}: "
                              f"{ {'scale': 'quick', 'out': 'runs/my-sweep', 'name': 'lr-sweep'}[key]}), "
                              f"got {raw[key]!r}")
    seeds = raw.get("seeds")
    if seeds is not None:
        seeds = check_seeds(seeds if isinstance(seeds, list) else [seeds], f"{source}: seeds")
    overrides = raw.get("overrides") or []
    if not isinstance(overrides, list):
        raise ConfigError(f"{source}: overrides must be a list of KEY=VALUE strings")
    name = str(raw.get("name") or Path(source).stem)
    return SweepSpec(name=name, preset=preset, config=config, scale=raw.get("scale"), grid=grid,
                     seeds=seeds, out=raw.get("out"), overrides=[str(o) for o in overrides],
                     runs=_runs_filter(raw.get("runs"), source, preset is not None))


def _runs_filter(raw: Any, source: str, of_preset: bool) -> dict[str, list[int] | None] | None:
    """``runs:`` as ``{label: seeds or None}``: a list of a preset's run labels, or a mapping of
    labels to their own seeds (``null``: the sweep's)."""
    if raw is None:
        return None
    if not of_preset:
        raise ConfigError(f"{source}: runs: picks runs of a preset; a config: sweep has one run per grid point")
    if isinstance(raw, list):
        raw = {label: None for label in raw}
    if not isinstance(raw, dict) or not raw or not all(isinstance(k, str) for k in raw):
        raise ConfigError(f"{source}: runs must be a list of the preset's run names or a mapping of them to "
                          f"seeds, e.g. runs: {{ma_tf: [0, 1, 2], bp_equiv: null}}")
    out: dict[str, list[int] | None] = {}
    for label, seeds in raw.items():
        if seeds is not None:
            seeds = check_seeds(seeds if isinstance(seeds, list) else [seeds], f"{source}: runs.{label}")
        out[label] = seeds
    return out


def plan_sweep(spec: SweepSpec, out: str | os.PathLike | None = None) -> tuple[list[Job], Path]:
    """The sweep's jobs (grid x runs x seeds) and its output folder."""
    from ..engine.config import TrainConfig

    base = Path(out or spec.out or Path("runs") / f"sweep-{spec.name}")
    if spec.preset is not None:
        if spec.overrides:
            raise ConfigError("overrides: apply to config: sweeps; for a preset put the keys in grid:")
        seeds = spec.seeds
        if spec.runs is not None:
            from .presets import get_preset

            preset = get_preset(spec.preset)
            unknown = sorted(set(spec.runs) - set(preset.runs))
            if unknown:
                raise ConfigError(f"runs: preset {preset.name!r} has no run {unknown[0]!r}; its runs are "
                                  f"{', '.join(preset.runs)}")
            default = list(seeds if seeds is not None else preset.resolved(spec.scale or "quick")[1])
            wanted = {label: list(s if s is not None else default) for label, s in spec.runs.items()}
            seeds = list(dict.fromkeys(default + [s for ss in wanted.values() for s in ss]))
        jobs = plan(spec.preset, spec.scale or "quick", seeds=seeds, grid=spec.grid or None, out=base,
                    trust_imports=spec.trust_imports)
        if spec.runs is not None:
            jobs = [j for j in jobs if j.seed in wanted.get(j.label.partition("[")[0], ())]
    else:
        config = TrainConfig.from_dict(spec.config or {}, spec.overrides)
        jobs = plan(config, seeds=spec.seeds or [config["seed"]], grid=spec.grid or None, out=base)
    if spec.source is not None:
        from ..engine.trust import refuse_file_imports

        for job in jobs:
            refuse_file_imports(job.config, f"sweep file {spec.source!r}", spec.trust_imports)
    for job in jobs:
        job.config["progress"] = False
        if "[rule.name=" in job.label:  # the rule already names the run: drop it from the label
            name, _, rest = job.label.partition("[")
            keys = [k for k in rest.rstrip("]").split(",") if not k.startswith("rule.name=")]
            job.label = name + (f"[{','.join(keys)}]" if keys else "")
            job.run_dir = inside(base, base / run_dir_name(job.label, job.seed))
    return jobs, base


def _same_config(job: Job) -> None:
    """A run directory from an earlier launch must hold this job's config (else: mixed results)."""
    from ..engine.config import load_config

    path = Path(job.run_dir) / "config.yaml"
    if not path.is_file():
        return
    stored = _flat(load_config(path, recommended=False, trust_imports=True).to_dict())  # compared, never built
    wanted = _flat(job.train_config().to_dict())
    skip = {"progress", "dataset.root", "out"}
    diff = sorted(k for k in set(stored) | set(wanted) if k not in skip and stored.get(k) != wanted.get(k))
    if diff:
        k = diff[0]
        raise UserError(f"run {job.run_dir!r} was made with {k}={stored.get(k)!r}, this sweep asks for "
                        f"{wanted.get(k)!r}: the sweep file changed; use another out: folder")


# ----------------------------------------------------------------------------- the index
def write_index(base: Path, spec: SweepSpec, jobs: Sequence[Job], states: dict[int, dict[str, Any]],
                extra: dict[str, Any] | None = None) -> Path:
    runs = []
    for i, job in enumerate(jobs):
        st = states.get(i, {})
        runs.append({"label": job.label, "seed": job.seed, "dir": os.path.relpath(job.run_dir, base),
                     "status": st.get("status", run_state(job.run_dir)), "message": st.get("message", ""),
                     "preset": job.preset, "scale": job.scale})
    index = {"name": spec.name, "spec": spec.to_dict(), "preset": jobs[0].preset if jobs else None,
             "scale": jobs[0].scale if jobs else None,
             "labels": list(dict.fromkeys(j.label for j in jobs)),
             "seeds": list(dict.fromkeys(j.seed for j in jobs)), "runs": runs,
             "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), **(extra or {})}
    base.mkdir(parents=True, exist_ok=True)
    atomic_write_json(base / INDEX, index)
    return base / INDEX


def read_index(base: str | os.PathLike) -> dict[str, Any]:
    """``sweep.json`` with each run's status read again from its directory."""
    p = Path(base)
    if not (p / INDEX).is_file():
        raise UserError(f"{str(p)!r} is not a sweep folder (no {INDEX}); pass the out: folder of a sweep")
    index = _read_json(p / INDEX)
    runs = index.get("runs")
    damaged = f"{str(p / INDEX)!r} is damaged"
    if not isinstance(runs, list) or not isinstance(index.get("labels", []), list):
        raise UserError(f"{damaged}: runs must be a list of run entries; run the sweep again to rewrite it")
    for i, run in enumerate(runs):
        if not (isinstance(run, dict) and isinstance(run.get("dir"), str) and isinstance(run.get("label"), str)
                and isinstance(run.get("seed"), int) and not isinstance(run.get("seed"), bool)):
            raise UserError(f"{damaged}: run entry {i + 1} needs dir, label (text) and seed (an integer); "
                            f"run the sweep again to rewrite it")
        inside(p, p / run["dir"])
        run["status"] = run_state(p / run["dir"])
    return index


# ----------------------------------------------------------------------------- progress
class Progress:
    """``done / running / failed, ETA`` on stderr: rewritten in place on a terminal, else per event."""

    def __init__(self, total: int, skipped: int, workers: int, stream: Any = None) -> None:
        self.total, self.skipped, self.workers = total, skipped, max(1, workers)
        self.done, self.failed, self.running = skipped, 0, 0
        self.durations: list[float] = []
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = ""

    def line(self) -> str:
        left = self.total - self.done
        eta = "?"
        if self.durations and left:
            mean = sum(self.durations) / len(self.durations)
            eta = _duration(mean * left / min(self.workers, left))
        elif not left:
            eta = "0s"
        return (f"sweep: {self.done}/{self.total} done ({self.skipped} skipped), {self.running} running, "
                f"{self.failed} failed, ETA {eta}")

    def show(self, force: bool = False) -> None:
        text = self.line()
        if text == self._last and not force:
            return
        self._last = text
        if self.tty:
            print("\r" + text, end="", file=self.stream, flush=True)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=self.stream, flush=True)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


# ----------------------------------------------------------------------------- run a sweep
def _sweep_lock(base: Path) -> int:
    """Hold ``<out>/.sweep.lock``: one sweep process per folder (released when it dies)."""
    base.mkdir(parents=True, exist_ok=True)
    fd = os.open(base / ".sweep.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(f"another sweep is running in {str(base)!r}; wait for it or choose another out") from None
    except ImportError:  # pragma: no cover
        pass
    return fd


def run_sweep(spec: SweepSpec, out: str | os.PathLike | None = None, jobs: int = 1, executor: str = "local",
              address: str | None = None, stream: Any = None, stack: bool = False) -> dict[str, Any]:
    """Run every unfinished job of ``spec``; returns the index (as written to ``sweep.json``).

    ``executor``: ``local`` (``jobs`` spawned processes, or this process when ``jobs == 1``) or
    ``ray`` (see :mod:`bioplausible.experiments.executors`). Every job still to run is checked first
    (config, rule, model, data); a user error stops the sweep before anything is written.
    ``stack=True``: runs that differ only by seed and learning rate train as one stacked model in
    this process (:mod:`bioplausible.engine.stacked`), with the same run folders.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"--jobs must be a positive integer, got {jobs!r}")
    if executor not in ("local", "ray"):
        raise ConfigError(f"--executor {executor!r}: use local or ray")
    if executor == "ray":
        executors.check_address(address)  # before any job is planned or run
    planned, base = plan_sweep(spec, out)
    labels = [str(Path(j.run_dir).resolve()) for j in planned]
    if len(set(labels)) != len(labels):
        raise ConfigError("two runs of this sweep have the same label and seed; give the grid distinct values")
    states = {i: run_state(j.run_dir) for i, j in enumerate(planned)}
    todo = [i for i, s in states.items() if s not in FINAL]
    for job in planned:  # finished runs too: a result made with another config is not this sweep's
        _same_config(job)
    for i in todo:
        planned[i].resume = Path(planned[i].run_dir).is_dir()
    check_jobs([planned[i] for i in todo])
    fd = _sweep_lock(base)
    try:
        results: dict[int, dict[str, Any]] = {i: {"status": s} for i, s in states.items() if s in FINAL}
        write_index(base, spec, planned, results, {"executor": executor, "jobs": jobs})
        progress = Progress(len(planned), len(planned) - len(todo), jobs, stream)
        progress.show(force=True)
        started = time.time()

        def on_event(kind: str, index: int, result: dict[str, Any]) -> None:
            if kind == "start":
                progress.running += 1
            else:
                progress.running = max(0, progress.running - 1)
                progress.done += 1
                if result.get("status") == "failed":
                    progress.failed += 1
                    if run_state(planned[index].run_dir) != "failed":  # the worker itself died
                        record_failure(planned[index], RuntimeError(result.get("message", "worker died")))
                if not result.get("skipped"):
                    progress.durations.append(float(result.get("seconds") or 0.0))
                results[index] = result
                write_index(base, spec, planned, results, {"executor": executor, "jobs": jobs})
            progress.show()

        work = [(i, job_dict(planned[i])) for i in todo]
        if work:
            if stack:  # runs that differ by seed and learning rate as one model, this process
                from .runs import run_sweep_stacked

                run_sweep_stacked(work, on_event)
            elif executor == "ray":
                executors.run_ray(work, jobs, address, on_event)
            elif jobs == 1 or len(work) == 1:
                executors.run_inline(work, on_event)
            else:
                executors.run_local(work, jobs, on_event)
        progress.close()
        index = write_index(base, spec, planned, results,
                            {"executor": executor, "jobs": jobs, "seconds": time.time() - started})
        return read_index(index.parent)
    finally:
        os.close(fd)
