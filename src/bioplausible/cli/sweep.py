"""Command-line parts for many runs: ``sweep``, ``tune``, ``report SWEEP_DIR``, ``compare --seeds``
and ``reproduce --all`` (registered by :func:`bioplausible.cli.app.build_parser`)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import UserError
from .args import config_from_args


def add_jobs_flags(p: argparse.ArgumentParser, executor: bool = False) -> None:
    p.add_argument("--jobs", "--workers", dest="workers", type=int, default=1,
                   help="run N jobs at once in worker processes (one torch thread each)")
    if executor:
        p.add_argument("--executor", choices=["local", "ray"], default="local",
                       help="local processes (default) or Ray tasks")
        p.add_argument("--address", default=None,
                       help="Ray: local (start a private instance, default), auto, or HOST:PORT of a cluster")


def _jobs(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise UserError(f"--jobs must be at least 1, got {args.workers}")
    return args.workers


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..experiments.sweep import load_spec, run_sweep
    from ..experiments.sweep_report import markdown, write_sweep_report

    spec = load_spec(args.config, trust_imports=args.trust_imports)
    if args.address and args.executor != "ray":
        raise UserError("--address is for --executor ray")
    from ..experiments.figures import check_format

    fmt = check_format(args.format)
    index = run_sweep(spec, out=args.out, jobs=_jobs(args), executor=args.executor, address=args.address,
                      stack=args.stack)
    base = Path(args.out or spec.out or Path("runs") / f"sweep-{spec.name}")
    paths = write_sweep_report(base, fmt=fmt)
    print(markdown(paths["tables"]))
    print(f"\nreport: {paths['report']}\ncsv:    {paths['csv']}")
    failed = [r for r in index["runs"] if r["status"] == "failed"]
    if failed:
        print(f"bioplausible: {len(failed)} run(s) failed; see error.json in their folders and run the "
              f"same command again to retry them", file=sys.stderr)
        return 1
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """One sweep folder: its mean ± std report (with the paper's values for a preset); anything
    else (run, compare, sweep and reproduce folders, mixed): the merged report grouped by
    (rule, configuration)."""
    from ..experiments.figures import check_format
    from ..experiments.sweep import INDEX

    fmt = check_format(getattr(args, "format", "png"))
    title = None if args.title == "Comparison" else args.title
    if len(args.run_dirs) == 1 and (Path(args.run_dirs[0]) / INDEX).is_file():
        from ..experiments.sweep_report import write_sweep_report

        paths = write_sweep_report(args.run_dirs[0], out=args.out, title=title, fmt=fmt)
    else:
        from ..experiments.merged_report import write_merged_report

        paths = write_merged_report(args.run_dirs, out=args.out, title=title or "Comparison", fmt=fmt)
    print(paths["report"].read_text())  # the settings the runs share (model, data sizes) and the tables
    print(f"report: {paths['report']}\ncsv:    {paths['csv']}")
    return 0


def compare_seeds(base: Any, rules: list[str], seeds: list[int], out: Path, jobs: int, fmt: str = "png",
                  stack: bool = False) -> int:
    """``compare``: every rule x seed as a sweep in ``out`` (``<rule>-seed<k>`` run folders,
    ``sweep.json``), reported as mean ± std; the same layout with one seed or many."""
    from ..experiments.sweep import SweepSpec, run_sweep
    from ..experiments.sweep_report import write_sweep_report

    # what the user set (not the resolved config), so each rule gets its own recommended and per-rule settings
    spec = SweepSpec(name="compare", config=base.explicit(), grid={"rule.name": rules}, seeds=seeds)
    index = run_sweep(spec, out=out, jobs=jobs, stack=stack)
    paths = write_sweep_report(out, title=f"Learning rules on {base['dataset']['name']}", fmt=fmt)
    print(paths["report"].read_text())
    print(f"report: {paths['report']}\ncsv:    {paths['csv']}\nplots:  {paths['curves']}, {paths['angles']}, "
          f"{paths['time']}")
    if all(r["status"] != "completed" for r in index["runs"]):
        print("bioplausible: no rule completed its run (see the status column)", file=sys.stderr)
        return 1
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from ..experiments.tune import (
        best_config,
        check_preset_path,
        check_space,
        parse_param,
        tune,
        write_preset,
    )

    params = [parse_param(t) for t in args.param]
    base = config_from_args(args, {"progress": False})
    check_space(base, params)
    if args.write_preset:
        check_preset_path(args.write_preset)
    metric = args.metric or ("val_accuracy" if base["dataset"].get("val_size") else "test_accuracy")
    if metric.startswith("test") and not args.metric:
        print("bioplausible: tuning on the test split (no dataset.val_size); pass --set dataset.val_size=N "
              "to tune on a validation split", file=sys.stderr)
    out = Path(args.out) if args.out else Path("runs") / (
        f"tune-{base['rule']['name']}-{base['dataset']['name']}-{time.strftime('%Y%m%d-%H%M%S')}")
    study = tune(base, params, args.trials, out, metric=metric, objective=args.objective, sampler=args.sampler,
                 seed=args.sampler_seed, storage=args.storage, study=args.study, jobs=_jobs(args))
    done = [t for t in study.trials if t.value is not None]
    print(f"{len(done)} trials in study {study.study_name!r}; best {args.objective} {metric} = "
          f"{study.best_value:.4g} (trial {study.best_trial.number}) with "
          + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in study.best_trial.params.items()))
    for t in sorted(done, key=lambda t: t.number):
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
        print(f"  trial {t.number:3d}: {metric} {t.value:.4g}  {shown}  [{t.user_attrs.get('status', '')}]")
    if not any(t.user_attrs.get("status") == "completed" for t in study.trials):
        first = next((t.user_attrs.get("status") for t in study.trials if t.user_attrs.get("status")), "none ran")
        print(f"bioplausible: no trial completed, so there is no best value (first trial: {first})",
              file=sys.stderr)
        return 1
    print(f"trials: {out / 'trials.csv'}")
    if args.write_preset:
        path = write_preset(args.write_preset, best_config(base, study), study, metric, args.objective)
        print(f"preset: {path} (run it with `bioplausible reproduce {path}`)")
    return 0


def register(sub: Any, add_train_flags: Any) -> None:
    p = sub.add_parser("sweep", help="run a grid of configs x seeds from a YAML file (local processes or Ray)")
    p.add_argument("config", help="sweep YAML: preset: or config:, grid:, seeds:, out:")
    p.add_argument("--out", help="sweep folder (default: the file's out:, else runs/sweep-<name>)")
    p.add_argument("--format", default="png", help="figure format: png, pdf or svg (default png)")
    add_jobs_flags(p, executor=True)
    from .args import add_trust_flag

    add_trust_flag(p)
    p.add_argument("--stack", action="store_true",
                   help="train runs that differ only by seed and learning rate as one stacked model in this "
                        "process (same run folders); runs that cannot stack say so and run one by one")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("tune", help="hyperparameter search with Optuna (random or TPE)")
    add_train_flags(p)
    p.add_argument("--param", action="append", default=[], metavar="KEY=KIND:ARGS",
                   help="a searched range: KEY=loguniform:LOW:HIGH, uniform:LOW:HIGH, int:LOW:HIGH[:log], "
                        "choice:A,B,...")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--sampler", choices=["tpe", "random"], default="tpe")
    p.add_argument("--sampler-seed", type=int, default=0)
    p.add_argument("--metric", help="what to optimise (default val_accuracy with a validation split, "
                                    "else test_accuracy); losses are minimised")
    p.add_argument("--objective", choices=["final", "best"], default="final",
                   help="the metric after the last epoch or at the best epoch")
    p.add_argument("--storage", help="Optuna storage shared by parallel workers, e.g. sqlite:///study.db")
    p.add_argument("--study", help="study name (with --storage: resume or join it)")
    p.add_argument("--write-preset", metavar="FILE", help="write the best configuration as a preset YAML")
    add_jobs_flags(p)
    p.set_defaults(func=cmd_tune)
