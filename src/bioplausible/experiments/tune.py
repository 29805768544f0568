"""Hyperparameter search with Optuna: ``bioplausible tune``.

Declared ranges, one per ``--param``::

    optimizer.lr=loguniform:1e-4:1e-1     # float, log scale
    rule.decay=uniform:0:1e-3             # float, linear scale
    batch_size=int:16:256                 # integer (add :log for a log scale)
    optimizer.name=choice:sgd,adam        # one of the listed values (YAML scalars)

Each trial is a :class:`~bioplausible.experiments.jobs.Job` run by :func:`~bioplausible.experiments.jobs.run_job` in
``<out>/trial-<number>``; its value is the run's final metric (``--objective final``) or the best
epoch's (``best``), read from the run's own records. A run that diverges or fails scores the worst
possible value (0 for accuracies and AUC when maximising, +inf when minimising) so the sampler
learns to avoid the region. Samplers: ``tpe`` (default) and ``random``, both seeded. With
``storage`` (e.g. ``sqlite:///study.db``) and a ``study`` name, several ``tune`` processes (or
``jobs > 1`` worker processes of one) share the study: each trial number, and its run
directory, is unique.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.metrics import lower_is_better
from ..errors import ConfigError, UserError


@dataclass
class Param:
    key: str
    kind: str  # loguniform | uniform | int | choice
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = None

    def suggest(self, trial: Any) -> Any:
        if self.kind in ("loguniform", "uniform"):
            return trial.suggest_float(self.key, self.low, self.high, log=self.kind == "loguniform")
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_categorical(self.key, self.choices)


def parse_param(text: str) -> Param:
    """``KEY=KIND:ARGS`` -> :class:`Param`; anything malformed is a ConfigError naming the fix."""
    from .._io import yaml_load

    example = "e.g. --param optimizer.lr=loguniform:1e-4:1e-1"
    key, eq, spec = str(text).partition("=")
    key = key.strip()
    if not eq or not key or ":" not in spec:
        raise ConfigError(f"--param {text!r}: write KEY=KIND:ARGS, {example}")
    kind, _, args = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "choice":
        values = [yaml_load(v.strip()) for v in args.split(",") if v.strip()]
        if not values:
            raise ConfigError(f"--param {text!r}: choice needs values, e.g. optimizer.name=choice:sgd,adam")
        return Param(key, "choice", choices=values)
    if kind not in ("loguniform", "uniform", "int"):
        raise ConfigError(f"--param {text!r}: unknown kind {kind!r}; use loguniform, uniform, int or choice")
    parts = args.split(":")
    log = kind == "int" and len(parts) == 3 and parts[2].strip() == "log"
    if len(parts) != (3 if log else 2):
        raise ConfigError(f"--param {text!r}: {kind} takes LOW:HIGH, {example}")
    try:
        low, high = float(parts[0]), float(parts[1])
    except ValueError:
        raise ConfigError(f"--param {text!r}: LOW and HIGH must be numbers, {example}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ConfigError(f"--param {text!r}: need finite LOW < HIGH")
    if (kind == "loguniform" or log) and low <= 0:
        raise ConfigError(f"--param {text!r}: a log range needs LOW > 0")
    if kind == "int" and (low != int(low) or high != int(high)):
        raise ConfigError(f"--param {text!r}: int bounds must be integers")
    return Param(key, kind, low, high, log=log)


def trial_value(run_dir: str | os.PathLike, metric: str, objective: str = "final") -> float | None:
    """The run's ``metric`` after the last epoch (``final``) or at its best epoch (``best``)."""
    from .report import load_run

    run = load_run(run_dir)
    if run.summary.get("status") != "completed":
        return None
    values = [e.get(metric) for e in run.epochs if e.get(metric) is not None]
    if not values:
        raise UserError(f"the runs record no {metric!r}; choose --metric from "
                        f"{', '.join(sorted(k for k in (run.summary.get('final') or {}) if '_' in k))}")
    if objective == "best":
        return min(values) if lower_is_better(metric) else max(values)
    return float(values[-1])


def _sampler(name: str, seed: int | None) -> Any:
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError(f"--sampler {name!r}: use tpe or random")


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise UserError("tune needs Optuna: pip install 'bioplausible[sweep]' (or pip install optuna)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def make_objective(base: Any, params: list[Param], out: Path, metric: str, objective: str, worker: bool):
    from .jobs import Job, run_job

    maximize = not lower_is_better(metric)
    worst = 0.0 if maximize else math.inf

    def fn(trial: Any) -> float:
        update: dict[str, Any] = {}
        from ..engine.config import _merge
        from .jobs import _dotted

        for p in params:
            update = _merge(update, _dotted(p.key, p.suggest(trial)))
        config = base.updated(update).updated({"progress": False})
        run_dir = out / f"trial-{trial.number}"
        job = Job(config.to_dict(), str(run_dir), f"trial-{trial.number}", config["seed"])
        try:
            summary = run_job(job, progress=False, worker=worker)
        except UserError as exc:  # a value the range allows but the run refuses: a bad point
            trial.set_user_attr("status", f"refused: {exc}")
            return worst
        trial.set_user_attr("status", summary.get("status"))
        trial.set_user_attr("run_dir", str(run_dir))
        value = trial_value(run_dir, metric, objective)
        return worst if value is None or not math.isfinite(value) else value

    return fn


def _check_trial_dirs(out: Path, n_done: int, storage: str | None) -> None:
    """The study numbers its next trial ``n_done``; a ``trial-K`` folder with K >= n_done is from
    another study (an earlier ``tune --out`` with in-memory storage) and would refuse every trial."""
    if not out.is_dir():
        return
    clash = sorted((d.name for d in out.glob("trial-*") if d.name[6:].isdigit() and int(d.name[6:]) >= n_done),
                   key=lambda n: int(n[6:]))
    if clash:
        how = ("pass the same --storage and --study as that search to continue it" if storage is None
               else "this --storage/--study is not the search that wrote them")
        raise UserError(f"--out {str(out)!r} already holds {clash[0]} from an earlier search; choose another "
                        f"--out, or {how}")


def check_preset_path(path: str | os.PathLike) -> None:
    """``--write-preset`` can be written: a .yaml/.yml name in an existing, writable folder (checked
    before the first trial, not after the whole study)."""
    p = Path(path)
    if p.suffix not in (".yaml", ".yml"):
        raise UserError(f"--write-preset {str(p)!r}: give a .yaml file name (reproduce reads presets from YAML)")
    if p.is_dir():
        raise UserError(f"--write-preset {str(p)!r} is a folder; give a .yaml file name")
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise UserError(f"--write-preset {str(p)!r}: folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UserError(f"--write-preset {str(p)!r}: not writable")


def _worker(storage: str, study: str, sampler: str, seed: int | None, n_trials: int, args: tuple) -> None:
    optuna = _import_optuna()
    s = optuna.load_study(study_name=study, storage=storage, sampler=_sampler(sampler, seed))
    s.optimize(make_objective(*args, worker=True), n_trials=n_trials)


def check_space(base: Any, params: list[Param]) -> None:
    """Every --param's bounds (or choices) make a valid config for the rule, before any trial runs:
    an unknown key, a value of the wrong type or out of the rule's range is one ConfigError line."""
    from ..engine.config import _merge
    from ..rules.registry import make
    from .jobs import _dotted

    for p in params:
        values = p.choices if p.kind == "choice" else (
            [int(p.low), int(p.high)] if p.kind == "int" else [p.low, p.high])
        for value in values:
            try:
                config = base.updated(_merge({}, _dotted(p.key, value)))
                make(config["rule"]["name"], **config.rule_options())
            except UserError as exc:
                raise ConfigError(f"--param {p.key}: the value {value!r} is refused before any trial: "
                                  f"{' '.join(str(exc).split())}") from None


def write_trials(study: Any, path: Path) -> Path:
    """``trials.csv``: one row per trial (number, value, state, the run's status, its parameters)."""
    import csv

    keys = sorted({k for t in study.trials for k in t.params})
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial", "value", "state", "status", *keys, "run_dir"])
        for t in sorted(study.trials, key=lambda t: t.number):
            w.writerow([t.number, t.value, t.state.name.lower(), t.user_attrs.get("status", ""),
                        *[t.params.get(k) for k in keys], t.user_attrs.get("run_dir", "")])
    return path


def tune(base: Any, params: list[Param], trials: int, out: str | os.PathLike, metric: str = "test_accuracy",
         objective: str = "final", sampler: str = "tpe", seed: int | None = 0, storage: str | None = None,
         study: str | None = None, jobs: int = 1) -> Any:
    """Run ``trials`` trials (shared among ``jobs`` processes) and return the Optuna study."""
    optuna = _import_optuna()
    if trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {trials}")
    if not params:
        raise ConfigError("give at least one --param, e.g. --param optimizer.lr=loguniform:1e-4:1e-1")
    keys = [p.key for p in params]
    if len(set(keys)) != len(keys):
        raise ConfigError("a --param key is given twice")
    if objective not in ("final", "best"):
        raise ConfigError(f"--objective {objective!r}: use final or best")
    check_space(base, params)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is a file; give a folder")
    if jobs > 1 and storage is None:  # the processes share a study in out/study.db
        out.mkdir(parents=True, exist_ok=True)
        storage = f"sqlite:///{(out / 'study.db').resolve()}"
    direction = "minimize" if lower_is_better(metric) else "maximize"
    name = study or f"tune-{out.name}"
    try:
        s = optuna.create_study(study_name=name, storage=storage, direction=direction,
                                sampler=_sampler(sampler, seed), load_if_exists=True)
    except Exception as exc:  # noqa: BLE001 - optuna/sqlalchemy raise many kinds for a bad URL
        first = (" ".join(str(exc).split()) or type(exc).__name__)[:200]
        raise UserError(f"--storage {storage!r} cannot be opened ({type(exc).__name__}: {first}); "
                        f"use e.g. --storage sqlite:///study.db") from None
    _check_trial_dirs(out, len(s.trials), storage)
    out.mkdir(parents=True, exist_ok=True)
    args = (base, params, out, metric, objective)
    from .jobs import check_jobs, plan

    check_jobs(plan(base, out=out / "trial-check"))  # data, model and rule exist; writes nothing
    if jobs <= 1:
        s.optimize(make_objective(*args, worker=False), n_trials=trials)
    else:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        share = [trials // jobs + (1 if i < trials % jobs else 0) for i in range(jobs)]
        procs = [ctx.Process(target=_worker, args=(storage, name, sampler, None if seed is None else seed + i,
                                                   n, args)) for i, n in enumerate(share) if n]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        s = optuna.load_study(study_name=name, storage=storage)
    write_trials(s, out / "trials.csv")
    return s


def best_config(base: Any, study: Any) -> Any:
    """``base`` with the best trial's values."""
    from ..engine.config import _merge
    from .jobs import _dotted

    update: dict[str, Any] = {}
    for key, value in study.best_trial.params.items():
        update = _merge(update, _dotted(key, value))
    return base.updated(update)


def write_preset(path: str | os.PathLike, config: Any, study: Any, metric: str, objective: str) -> Path:
    """The best configuration as a preset YAML (one run, three seeds) that ``reproduce`` reads."""
    import yaml

    cfg = config.to_dict()
    rule = cfg.pop("rule")
    for key in ("seed", "out", "progress"):
        cfg.pop(key, None)
    name = Path(path).stem.replace("_", "-")
    label = rule["name"]
    preset = {"name": name, "title": f"{label} on {cfg['dataset']['name']}, tuned by bioplausible tune",
              "paper": "none (tuned here)", "config": cfg, "runs": {label: rule}, "seeds": [0, 1, 2],
              "scales": {"quick": {}, "full": {}},
              "paper_results": {"metric": metric if metric != "val_accuracy" else "test_accuracy", "values": {},
                                "note": "tuned configuration; no paper value"}}
    head = (f"# Written by `bioplausible tune`: study {study.study_name!r}, {len(study.trials)} trials, best "
            f"{objective} {metric} = {study.best_value:.4g} (trial {study.best_trial.number}).\n"
            f"# Tuned values: {', '.join(f'{k}={v!r}' for k, v in study.best_trial.params.items())}\n")
    p = Path(path)
    p.write_text(head + yaml.safe_dump(preset, sort_keys=False))
    from .presets import get_preset

    get_preset(str(p))  # what we wrote must load as a preset
    return p
