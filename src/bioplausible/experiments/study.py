"""``bp.compare``: the CLI's ``compare --seeds`` for a user's own model, from Python.

::

    import bioplausible as bp
    rows = bp.compare(lambda: MyNet(), ["bp", "fa", "dfa", "np"], (X, y), (X_test, y_test),
                      seeds=[0, 1, 2], out="runs/my-study", epochs=5, lr=0.05,
                      settings=["np:optimizer.groups.feedback.lr=5e-4"])

writes what ``bioplausible compare`` writes (``<out>/<rule>-seed<k>/`` run folders,
``sweep.json``, ``report.md``, ``results.csv``, ``layers.csv``, the figures) and returns the
table of ``results.csv`` as a list of dicts (one per rule: mean, std and seed count of the test
accuracy, and the other columns).
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError


def _fresh_model(model_or_factory: Any, seed: int) -> Any:
    """A new model for one run: the factory's, or a copy of the module re-initialised with ``seed``."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    if isinstance(model_or_factory, nn.Module):
        model = copy.deepcopy(model_or_factory)
        for module in model.modules():  # every layer that knows its own init draws it anew
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
        return model
    if callable(model_or_factory):
        model = model_or_factory()
        if not isinstance(model, nn.Module):
            raise ConfigError(f"compare(): the model factory returned {type(model).__name__}, not an nn.Module")
        return model
    raise ConfigError("compare(): pass an nn.Module or a function that returns one")


def _train_stacked(planned: list, model_or_factory: Any, bundle: Any, verbose: bool) -> list:
    """Train the groups of ``planned`` that stack (one rule's seeds) as stacked models, each run
    built exactly as :func:`~bioplausible.engine.trainer.fit` builds it; returns the jobs left to
    train one after another (after one line on stderr saying why)."""
    import contextlib
    import sys

    from ..data import DataBundle
    from ..engine.config import TrainConfig
    from ..engine.rundir import run_lock
    from ..engine.runtime import runtime
    from ..engine.stacked import support
    from ..engine.trainer import DTYPES, fit_trainer, resolve_device
    from .runs import StackedTraining, plan_groups

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    apart = []
    for group in plan_groups(planned):
        jobs = [planned[i] for i in group]
        configs = [TrainConfig.from_dict(j.config, recommended=False).updated({"progress": verbose}) for j in jobs]
        reason = support.config_reason(configs[0]) if len(jobs) > 1 else ""
        if reason is None:
            with runtime(configs[0]):
                device, dtype = resolve_device(configs[0]["device"]), DTYPES[configs[0]["dtype"]]
                shared = DataBundle(train=bundle.train.to(device, dtype),
                                    test=None if bundle.test is None else bundle.test.to(device, dtype),
                                    val=None if getattr(bundle, "val", None) is None else bundle.val.to(device, dtype),
                                    info=bundle.info)
                trainers = [fit_trainer(_fresh_model(model_or_factory, job.seed), job.label, shared, cfg,
                                        out=job.run_dir, given=bundle) for job, cfg in zip(jobs, configs)]
                reason = support.model_reason(trainers)
                if reason is None:
                    for job in jobs:
                        Path(job.run_dir).mkdir(parents=True, exist_ok=True)
                    with contextlib.ExitStack() as locks:
                        for job in jobs:
                            locks.enter_context(run_lock(Path(job.run_dir)))
                        StackedTraining(jobs, trainers, say).run()
                    continue
        if reason:
            say(f"stack: {jobs[0].label}: {reason}; running its {len(jobs)} run(s) one after another")
        apart += jobs
    return apart


def compare(model_or_factory: Any | Callable[[], Any], rules: str | Sequence[str], data: Any,
            eval_data: Any = None, *, seeds: Sequence[int] = (0,), out: str | os.PathLike | None = None,
            config: Any = None, settings: Sequence[str] | None = None, verbose: bool = False,
            fmt: str = "png", title: str | None = None, stack: bool = False,
            **overrides: Any) -> list[dict[str, Any]]:
    """Train ``model_or_factory`` with every rule x seed and write the comparison report.

    ``model_or_factory``: a function returning a fresh model (called once per run, after
    ``torch.manual_seed(seed)``), or a module (copied and re-initialised per run with
    ``reset_parameters``). ``data``/``eval_data``: as for :func:`bioplausible.fit`. ``overrides``:
    fit's keyword shortcuts (``lr``, ``epochs``, ``batch_size``, ...); ``settings``: ``KEY=VALUE``
    or ``RULE:KEY=VALUE`` strings as ``--set`` takes them; ``config``: a config mapping or
    :class:`~bioplausible.engine.config.TrainConfig` under both. ``out`` (default
    ``runs/compare-<time>``) must be new or empty. ``stack``: the seeds of each rule train as one
    stacked model where the rule, model and optimizer allow it (as the CLI's ``--stack``: the same
    run folders and numbers; a rule that cannot stack says why in one line and runs its seeds one
    after another). Returns the rows of ``results.csv``.
    """
    from ..engine.config import PER_RULE, TrainConfig
    from ..engine.rundir import check_run_dir
    from ..engine.trainer import _SHORTCUTS, fit
    from ..rules.registry import make
    from .figures import check_format
    from .jobs import Job
    from .seeds import check_seeds
    from .sweep import SweepSpec, write_index
    from .sweep_report import write_sweep_report

    names = [r.strip() for r in (rules.split(",") if isinstance(rules, str) else rules) if str(r).strip()]
    if not names:
        raise ConfigError("compare(): give at least one rule, e.g. ['bp', 'fa']")
    if len(set(names)) != len(names):
        raise ConfigError("compare(): a rule is listed twice")
    seeds = check_seeds(list(seeds), "compare(): seeds")
    fmt = check_format(fmt)
    base = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config or {})
    update: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in _SHORTCUTS:
            raise ConfigError(f"compare() got an unknown option {key!r}; use {', '.join(sorted(_SHORTCUTS))}, "
                              f"settings=[...] or config=")
        node = update
        for part in _SHORTCUTS[key][:-1]:
            node = node.setdefault(part, {})
        node[_SHORTCUTS[key][-1]] = value
    base = base.updated(update, list(settings or []))
    stray = [r for r in (base.explicit().get(PER_RULE) or {}) if r not in {n.lower() for n in names}]
    if stray:
        raise ConfigError(f"compare(): settings for rule {stray[0]!r}, which is not compared ({', '.join(names)})")
    folder = Path(out) if out is not None else Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    check_run_dir(folder)
    planned = []
    for rule in names:  # every rule and its options are valid before anything trains
        cfg = base.updated({"rule": {"name": rule}})
        make(rule, **cfg.rule_options())
        for seed in seeds:
            planned.append(Job(cfg.updated({"seed": seed}).to_dict(), str(folder / f"{rule}-seed{seed}"), rule, seed))
    if isinstance(data, str):
        from ..data import load_dataset

        data = load_dataset(data, **{k: v for k, v in base.dataset_options().items() if v is not None})
    from ..data.adapt import as_bundle

    bundle = as_bundle(data, eval_data)
    spec = SweepSpec(name="compare", config=base.explicit(), grid={"rule.name": names}, seeds=seeds)
    write_index(folder, spec, planned, {})
    if not isinstance(stack, bool):
        raise ConfigError(f"compare(stack=...) must be True or False, got {stack!r}")
    apart = _train_stacked(planned, model_or_factory, bundle, verbose) if stack else planned
    for job in apart:
        cfg = TrainConfig.from_dict(job.config, recommended=False)
        model = _fresh_model(model_or_factory, job.seed)
        fit(model, job.label, bundle, config=cfg, out=job.run_dir, verbose=verbose)
    for job in planned:
        path = Path(job.run_dir) / "summary.json"
        summary = json.loads(path.read_text())
        summary["job"] = {"label": job.label, "seed": job.seed, "preset": None, "scale": None}
        path.write_text(json.dumps(summary, indent=2, default=str))
    write_index(folder, spec, planned, {})
    name = getattr(getattr(bundle, "info", None), "name", "data")
    paths = write_sweep_report(folder, title=title or f"Learning rules on {name}", fmt=fmt)
    return [dict(r) for r in paths["tables"]["rows"]]


__all__ = ["compare"]
