"""Runs as jobs: ``plan`` what to train, ``run_job`` one run anywhere, ``aggregate`` the results.

A :class:`Job` is plain, picklable data (the full config mapping, the run directory, a label,
the seed and the preset it came from), so a job can be handed to a worker process or a
cluster scheduler and run with :func:`run_job` there::

    jobs = plan("fb-mnist-sigmoid", "quick")             # preset x scale x seeds (x grid)
    check_jobs(jobs)                                      # every user error, before anything is written
    summaries = [run_job(job) for job in jobs]            # or pool.map(run_job_in_worker, jobs)
    stats = aggregate(summaries)                          # {label: {metric: (mean, std, n)}}

:func:`run_job` is the one place that sets torch's thread count, seeds, applies
``deterministic`` and ``flush_denormal``, loads the data, builds the model, constructs the
:class:`~bioplausible.engine.trainer.Trainer` and writes the run directory. A run directory has one
writer at a time: :func:`run_job` holds an ``flock`` on ``<run_dir>/.lock`` while it trains (the
kernel drops it when the process dies, so a killed run leaves nothing stuck).

``flush_denormal: true`` (default false) makes the CPU flush subnormal floats to zero
(``torch.set_flush_denormal``): GEMMs over weights or errors that decay towards zero can run
several times faster, but results change slightly (values below ~1e-38 in float32 become 0).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import shutil
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .._io import atomic_write_json
from ..core.metrics import metric_value
from ..engine.config import TrainConfig, _merge
from ..engine.rundir import check_run_dir, run_lock
from ..engine.runtime import check_device, runtime
from ..errors import ConfigError, StorageError, UserError
from .seeds import check_seeds

#: what :func:`aggregate` reports by default (names of :mod:`bioplausible.core.metrics`)
METRICS = ("test_accuracy", "best_test_accuracy", "grad_angle", "test_loss", "train_loss")


@dataclass
class Job:
    """One training run: everything :func:`run_job` needs, as plain data."""

    config: dict[str, Any]
    run_dir: str
    label: str
    seed: int
    preset: str | None = None
    scale: str | None = None
    resume: bool = False

    def train_config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.config, recommended=False)  # complete since plan()


def _dotted(key: str, value: Any) -> dict[str, Any]:
    """``("optimizer.lr", 0.1)`` -> {"optimizer": {"lr": 0.1}}; ``"np:optimizer.lr"`` goes to
    ``per_rule.np`` (that rule's runs only)."""
    from ..engine.config import key_path

    node: dict[str, Any] = {}
    cur = node
    parts = key_path(str(key))
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    cur[parts[-1]] = value
    return node


def _grid_points(grid: dict[str, Sequence[Any]] | None) -> list[tuple[str, dict[str, Any]]]:
    if not grid:
        return [("", {})]
    if not isinstance(grid, dict):
        raise ConfigError("grid must map a config key to a list of values, e.g. {optimizer.lr: [0.1, 0.01]}")
    keys = list(grid)
    for k in keys:
        if not isinstance(grid[k], (list, tuple)) or not grid[k]:
            raise ConfigError(f"grid {k}: give a non-empty list of values")
    points = []
    for values in itertools.product(*(grid[k] for k in keys)):
        update: dict[str, Any] = {}
        for k, v in zip(keys, values):
            update = _merge(update, _dotted(k, v))
        points.append((",".join(f"{k}={v}" for k, v in zip(keys, values)), update))
    return points


def _absolute_data(config: TrainConfig) -> TrainConfig:
    """The config with an ``npz:`` file named by its absolute path (a resume from another working
    directory must not find another file of the same relative name)."""
    from ..data.custom import absolute_name

    name = config["dataset"]["name"]
    full = absolute_name(name, config["dataset"].get("root"))
    return config if full == name else config.updated({"dataset": {"name": full}})


DATA_RECORD = "data.json"


def check_data_record(run_dir: Path, config: TrainConfig, resume: bool) -> dict[str, Any] | None:
    """The fingerprint of the config's data file; on resume it must equal the one the run recorded
    in ``data.json`` when it started (else a one-line UserError: the data changed)."""
    from ..data.custom import fingerprint

    fp = fingerprint(config["dataset"]["name"], config["dataset"].get("root"))
    record = run_dir / DATA_RECORD
    if resume and fp is not None and record.is_file():
        stored = _read_json(record)
        if stored.get("sha256") != fp["sha256"]:
            raise UserError(f"--resume {str(run_dir)!r}: the data file {fp['file']} changed since the run "
                            f"started (sha256 {str(stored.get('sha256'))[:12]}... -> {fp['sha256'][:12]}...); "
                            f"a run keeps its data: restore the file or start a new run with --out")
    return fp


def run_dir_name(label: str, seed: int) -> str:
    """``<label>-seed<seed>`` made safe as one directory name: path separators, control characters
    and a leading dot become ``_`` (a grid value ``npz:../../x.npz`` must not climb out of the
    sweep folder); a very long name is cut and completed by a hash of the whole."""
    import hashlib
    import re

    name = re.sub(r"[/\\\x00-\x1f\x7f]", "_", f"{label}-seed{seed}")
    if name.startswith("."):
        name = "_" + name[1:]
    if len(name.encode()) > 200:
        digest = hashlib.sha256(name.encode()).hexdigest()[:12]
        name = name.encode()[:180].decode(errors="ignore") + f"~{digest}-seed{seed}"
    return name


def inside(base: Path, run_dir: str | os.PathLike) -> str:
    """``run_dir`` as a string, after checking that it lies inside ``base`` (ConfigError if not)."""
    b, r = Path(base).resolve(), Path(run_dir).resolve()
    if r != b and b not in r.parents:
        raise ConfigError(f"run directory {str(run_dir)!r} would lie outside {str(base)!r}")
    return str(run_dir)


def plan(preset_or_config: Any, scale: str | None = None, seeds: Sequence[int] | None = None,
         grid: dict[str, Sequence[Any]] | None = None, out: str | os.PathLike | None = None,
         trust_imports: bool = False, overrides: Sequence[str] | None = None) -> list[Job]:
    """Jobs for a preset (name, file or :class:`Preset`) or a config (TrainConfig or mapping).

    A preset gives one job per run x grid point x seed, in ``<out>/<label>-seed<seed>``. A
    config gives one job per grid point x seed, labelled by its rule; a single job (no grid,
    no ``seeds``) runs in ``out`` itself. Every config is validated here. A preset read from a
    file that names an import-path model or dataset is refused unless ``trust_imports``.
    ``overrides`` (``KEY=VALUE`` or ``RULE:KEY=VALUE``) are applied to a preset's every run, last.
    """
    from .presets import Preset, get_preset

    points = _grid_points(grid)
    if isinstance(preset_or_config, (str, Preset)):
        preset = preset_or_config if isinstance(preset_or_config, Preset) else get_preset(preset_or_config)
        scale = scale or "quick"
        config, preset_seeds = preset.resolved(scale)
        config = config.frozen()  # a preset states its settings: no rule's recommended ones replace them
        seeds = check_seeds(seeds if seeds is not None else preset_seeds)
        base = Path(out) if out is not None else (
            Path("runs") / f"reproduce-{preset.name}-{scale}-{time.strftime('%Y%m%d-%H%M%S')}")
        jobs = []
        for label, run in preset.runs.items():
            rule = {k: v for k, v in run.items() if k != "config"}
            for suffix, update in points:
                name = f"{label}[{suffix}]" if suffix else label
                for seed in seeds:
                    cfg = _absolute_data(config.updated(run.get("config") or {}).updated(update).updated(
                        {"rule": rule, "seed": seed}, list(overrides or [])))
                    jobs.append(Job(cfg.to_dict(), inside(base, base / run_dir_name(name, seed)), name, seed,
                                    preset=preset.name, scale=scale))
        if preset.from_file:
            from ..engine.trust import refuse_file_imports

            for job in jobs:
                refuse_file_imports(job.config, f"preset file {preset.source!r}", trust_imports)
        return jobs
    config = (preset_or_config if isinstance(preset_or_config, TrainConfig)
              else TrainConfig.from_dict(preset_or_config))
    single = seeds is None and not grid
    seeds = check_seeds(seeds if seeds is not None else [config["seed"]])
    from ..data.custom import run_label

    base = Path(out) if out is not None else (
        Path("runs") / f"train-{config['rule']['name']}-{run_label(config['dataset']['name'])}-"
        f"{time.strftime('%Y%m%d-%H%M%S')}")
    jobs = []
    for suffix, update in points:
        cfg_point = config.updated(update)
        label = cfg_point["rule"]["name"] + (f"[{suffix}]" if suffix else "")
        for seed in seeds:
            cfg = _absolute_data(cfg_point.updated({"seed": seed}))
            run_dir = base if single else Path(inside(base, base / run_dir_name(label, seed)))
            jobs.append(Job(cfg.to_dict(), str(run_dir), label, seed))
    return jobs


# ----------------------------------------------------------------------------- data and checks
_DATA_CACHE: dict[str, Any] = {}


def load_data(config: TrainConfig) -> Any:
    """The config's dataset; the last one loaded in this process is reused."""
    from ..data import load_dataset
    from ..data.core import resolve_root

    options = {k: v for k, v in config.dataset_options().items() if v is not None}
    where = str(resolve_root(options.get("root")).resolve())
    key = json.dumps([config["dataset"]["name"], options, where, os.environ.get("BIOPLAUSIBLE_MIRROR")],
                     sort_keys=True, default=str)
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = load_dataset(config["dataset"]["name"], **options)
    return _DATA_CACHE[key]


def clear_data_cache() -> None:
    """Forget the dataset :func:`load_data` keeps (the CLI does this after every command)."""
    _DATA_CACHE.clear()


def _tiny(data: Any, n: int = 2) -> Any:
    """The same dataset cut to ``n`` examples per split: enough to build a Trainer on."""
    from ..data import DataBundle, Split

    def cut(split: Any) -> Any:
        return None if split is None else Split(split.x[:n], split.y[:n])

    return DataBundle(train=cut(data.train), test=cut(data.test), val=cut(getattr(data, "val", None)),
                      info=data.info)


def _build(job: Job, data: Any, config: TrainConfig, out: Path | None, progress: bool | None = None):
    import torch

    from ..engine.trainer import Trainer
    from ..models import build_model

    torch.manual_seed(config["seed"])
    from ..data.reconstruction import output_size

    model = build_model(config["model"]["spec"], input_shape=data.info.input_shape,
                        num_classes=output_size(data.info), **config.model_options())
    return Trainer(model, config["rule"]["name"], data, config, out=out, progress=progress)


def check_jobs(jobs: Sequence[Job]) -> None:
    """Every user error of every job (config, rule options, model, rule x model, optimizer, data),
    raised before any job trains or writes anything."""
    from ..rules.registry import make

    for job in jobs:
        config = job.train_config()
        check_device(config["device"])
        make(config["rule"]["name"], **config.rule_options())
        check_run_dir(Path(job.run_dir), resume=job.resume)  # before the (slow) data load
        data = load_data(config)
        _build(job, _tiny(data), config, out=None, progress=False)


def run_job(job: Job, progress: bool | None = None, worker: bool = False) -> dict[str, Any]:
    """Train ``job`` and write its run directory; returns the run's summary.

    ``worker=True`` (a process that runs jobs for someone else) uses one torch thread unless
    ``$BIOPLAUSIBLE_THREADS`` says otherwise. User errors are raised before the directory is
    created; a directory this call created is removed again when one is raised later.
    """
    config = job.train_config()
    run_dir = Path(job.run_dir)
    check_device(config["device"])
    check_run_dir(run_dir, resume=job.resume)
    with runtime(config, worker=worker):
        data = load_data(config)
        fp = check_data_record(run_dir, config, job.resume)
        created = not run_dir.exists()
        trainer = _build(job, data, config, out=run_dir, progress=progress)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create run directory {str(run_dir)!r}: {exc.strerror}; "
                            f"choose another --out") from None
        try:
            with run_lock(run_dir):
                check_run_dir(run_dir, resume=job.resume)
                if fp is not None and not (job.resume and (run_dir / DATA_RECORD).is_file()):
                    atomic_write_json(run_dir / DATA_RECORD, fp)
                result = trainer.run(resume=job.resume)
                summary = dict(result.summary)
                summary["job"] = {"label": job.label, "seed": job.seed, "preset": job.preset,
                                  "scale": job.scale}
                try:
                    atomic_write_json(run_dir / "summary.json", summary)
                except OSError as exc:
                    raise StorageError(f"cannot write {str(run_dir / 'summary.json')!r}: {exc.strerror}; the run "
                                       f"finished and its checkpoint is intact: free space, then --resume it "
                                       f"(or run the same sweep again)") from None
        except UserError as exc:
            if created and not isinstance(exc, StorageError):  # what a run wrote is never deleted
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
    summary["run_dir"] = str(run_dir)
    return summary


def run_job_in_worker(job: Job) -> dict[str, Any]:
    """:func:`run_job` as a worker process calls it: one thread, no progress bar."""
    return run_job(job, progress=False, worker=True)


# ----------------------------------------------------------------------------- resume
RESUMABLE = {"epochs", "progress", "dataset.root"}


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): node}


def resume_job(run_dir: str | os.PathLike, changes: dict[str, Any] | None = None,
               overrides: list[str] | None = None, trust_imports: bool = False) -> Job:
    """The job that continues ``run_dir``; ``changes``/``overrides`` may only extend ``epochs``.

    Any other change (rule, learning rate, batch size, dataset, ...) would mix two configs in one
    run, so it is refused in one line naming the key; ``progress`` and ``dataset.root`` (where
    the same files are found) may change. A ``config.yaml`` naming an import-path model or
    dataset is refused unless ``trust_imports`` (a run folder may come from anyone).
    """
    from ..engine.config import load_config

    path = Path(run_dir)
    if not (path / "config.yaml").is_file():
        raise UserError(f"--resume {str(path)!r}: no config.yaml there; pass a run directory written by train")
    stored = load_config(path / "config.yaml", recommended=False, trust_imports=trust_imports)
    wanted = stored.updated(changes or {}, overrides or [])
    old, new = _flat(stored.to_dict()), _flat(wanted.to_dict())
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in RESUMABLE)
    if changed:
        k = changed[0]
        raise UserError(f"--resume cannot change {k} ({old.get(k)!r} -> {new.get(k)!r}): a run keeps its "
                        f"config; only --epochs can be extended. Start a new run with --out for other values")
    if wanted["epochs"] < stored["epochs"]:
        raise UserError(f"--resume --epochs {wanted['epochs']}: the run was planned for {stored['epochs']} "
                        f"epochs; --epochs can only extend it")
    summary = _read_json(path / "summary.json") if (path / "summary.json").is_file() else {}
    job = summary.get("job") or {}
    return Job(wanted.to_dict(), str(path), str(job.get("label") or wanted["rule"]["name"]), wanted["seed"],
               preset=job.get("preset"), scale=job.get("scale"), resume=True)


# ----------------------------------------------------------------------------- aggregate
def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{str(path)!r} cannot be read as JSON ({type(exc).__name__}); the run was "
                        f"interrupted while writing it or the file is damaged: rerun or --resume it") from None
    if not isinstance(data, dict):
        raise UserError(f"{str(path)!r} is not a run summary")
    return data


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, sample std, n) of the finite values; (None, None, 0) when there are none."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None, None, 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0), len(vals)


def _summary_of(item: Any) -> dict[str, Any]:
    if isinstance(item, dict):
        return item
    return _read_json(Path(item) / "summary.json")


def aggregate(items: Iterable[Any], metrics: Sequence[str] = METRICS) -> dict[str, dict[str, tuple]]:
    """Run directories or summaries -> ``{label: {metric: (mean, std, n)}}`` over seeds.

    The label is the job's (``summary["job"]["label"]``), else the rule's name.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        s = _summary_of(item)
        label = str((s.get("job") or {}).get("label") or s.get("rule", "?"))
        groups.setdefault(label, []).append(s)
    return {label: {m: mean_std(metric_value(s, m) for s in sums) for m in metrics}
            for label, sums in groups.items()}


def statuses(items: Iterable[Any]) -> dict[str, list[str]]:
    out: dict[str, set[str]] = {}
    for item in items:
        s = _summary_of(item)
        label = str((s.get("job") or {}).get("label") or s.get("rule", "?"))
        out.setdefault(label, set()).add(str(s.get("status")))
    return {k: sorted(v) for k, v in out.items()}


def job_dict(job: Job) -> dict[str, Any]:
    return copy.deepcopy(asdict(job))


__all__ = ["Job", "aggregate", "check_jobs", "load_data", "mean_std", "plan",
           "resume_job", "run_job", "run_job_in_worker", "statuses"]
