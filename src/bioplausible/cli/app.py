"""Command line: ``bioplausible list | train | compare | reproduce | sweep | tune | report | data``, and
the subcommands and plots the rule families register (:mod:`bioplausible.core.hooks`).

User errors (unknown names, bad values, missing data) print one line and exit with status 2,
before any run directory is written.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .._registry import discover_families
from ..core.hooks import COMMANDS, PLOTS, Plot
from ..errors import UserError
from .args import Parser, add_train_flags, add_trust_flag, config_from_args, default_out, flags_from_args


def cmd_list(args: argparse.Namespace) -> int:
    from ..core.losses import list_losses
    from ..data import list_datasets
    from ..experiments.presets import get_preset, list_presets
    from ..models import list_models
    from ..rules.registry import RULES, list_rules

    what = args.what or "all"
    if what in ("all", "rules"):
        print("rules:")
        for name in list_rules():
            cls = RULES.get(name)
            print(f"  {name:10s} {cls.summary}  [{cls.paper}]")
    if what in ("all", "datasets"):
        print("datasets:  " + ", ".join(list_datasets()) + "   (or npz:PATH, pkg.module:callable)")
    if what in ("all", "models"):
        print("models:    " + ", ".join(list_models()) + "   (e.g. mlp:784-500-10,activation=sigmoid; "
              "or pkg.module:callable,key=value)")
    if what in ("all", "losses"):
        print("losses:    " + ", ".join(list_losses()))
    if what in ("all", "presets"):
        print("presets:")
        for name in list_presets():
            p = get_preset(name)
            print(f"  {name:28s} {p.title}  (scales: {', '.join(p.scales)})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ..experiments.jobs import check_jobs, plan, resume_job, run_job

    if args.resume:
        if args.config or args.out:
            raise UserError("--resume continues a run with its own config.yaml and directory; "
                            "drop --config/--out (only --epochs can be extended)")
        job = resume_job(args.resume, flags_from_args(args), args.set, trust_imports=args.trust_imports)
    else:
        config = config_from_args(args)
        job = plan(config, out=Path(args.out) if args.out else default_out("train", config))[0]
    check_jobs([job])
    summary = run_job(job)
    final = summary.get("final") or {}
    shown = (f"test accuracy {final['test_accuracy']:.2f}%" if "test_accuracy" in final
             else f"test loss {final.get('test_loss', float('nan')):.4g}")
    print(f"{summary['status']}: {shown} after "
          f"{summary['epochs_completed']} epochs; run directory {job.run_dir}")
    if summary["status"] != "completed":
        print(f"bioplausible: {summary['message']}", file=sys.stderr)
        return 1
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ..engine.rundir import check_run_dir
    from ..experiments.jobs import check_jobs, plan
    from ..experiments.runs import run_jobs
    from ..experiments.report import load_run, write_report

    rules = [r.strip() for item in args.rules for r in item.split(",") if r.strip()]
    if not rules:
        raise UserError("--rules needs at least one rule name, e.g. --rules bp,fa,dfa")
    twice = sorted({r for r in rules if rules.count(r) > 1})
    if twice:
        raise UserError(f"--rules names {twice[0]!r} twice; each rule is one run (use --set or a preset "
                        f"for two settings of one rule)")
    extra = {"probe_every": args.probe_every if args.probe_every is not None else 100}
    base = config_from_args(args, extra)
    from ..data.custom import run_label

    out = Path(args.out) if args.out else Path("runs") / (
        f"compare-{run_label(base['dataset']['name'])}-{time.strftime('%Y%m%d-%H%M%S')}")
    check_run_dir(out)
    if args.seeds is not None:  # every rule x seed, reported as mean ± std over seeds
        from ..experiments.seeds import parse_seeds
        from .sweep import compare_seeds

        return compare_seeds(base, rules, parse_seeds(args.seeds), out, _workers(args), stack=args.stack)
    jobs = [plan(base.updated({"rule": {"name": r}}), out=out / r)[0] for r in rules]
    check_jobs(jobs)  # every rule, model and option is valid before the first run trains
    summaries = run_jobs(jobs, workers=_workers(args), stack=args.stack)
    runs = [load_run(job.run_dir, job.label) for job in jobs]
    paths = write_report(runs, out, title=f"Learning rules on {base['dataset']['name']}")
    print(paths["report"].read_text())
    print(f"report: {paths['report']}\nplot:   {paths['plot']}")
    if all(s["status"] != "completed" for s in summaries):
        print("bioplausible: no rule completed its run (see the status column)", file=sys.stderr)
        return 1
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from ..experiments.reproduce import format_report, run_preset
    from ..experiments.seeds import parse_seeds

    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    if args.all or args.only or args.skip:
        from ..experiments.reproduce import cmd_reproduce_all

        return cmd_reproduce_all(args, seeds, _workers(args))
    if not args.name:
        raise UserError("give a preset name (see `bioplausible list presets`) or --all")
    report = run_preset(args.name, args.scale, out=args.out, progress=not args.quiet, seeds=seeds,
                        workers=_workers(args), stack=args.stack, trust_imports=args.trust_imports)
    print(format_report(report))
    print(f"\nresults: {report['out_dir']}")
    from ..experiments.verdicts import FAIL, mark

    failed = [c for c in report["checks"] if mark(c) == FAIL]
    return 1 if failed and args.strict else 0


def cmd_report(args: argparse.Namespace) -> int:
    from .sweep import cmd_report as report_runs_or_sweep

    return report_runs_or_sweep(args)


def _workers(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise UserError(f"--workers/--jobs must be at least 1, got {args.workers}")
    return args.workers


def cmd_data(args: argparse.Namespace) -> int:
    from .. import data as D

    if args.action == "list":
        for name in D.list_datasets():
            st = D.dataset_status(name, args.root)
            mark = "present" if st["present"] else "missing"
            files = ", ".join(f["path"] for f in st["files"])
            print(f"{name:14s} {mark:8s} {st['root']}  [{files}]")
        return 0
    if not args.names:
        raise UserError(f"`data {args.action}` needs dataset names, e.g. `bioplausible data {args.action} mnist`")
    for name in args.names:
        if args.action == "fetch":
            D.fetch(name, args.root)
            print(f"{name}: ok")
        else:
            problems = D.verify(name, args.root)
            print(f"{name}: " + ("ok" if not problems else "; ".join(problems)))
            if problems:
                return 1
    return 0


STACK_HELP = ("train the seeds (and learning rates) of each rule as one stacked model in this process "
              "(--jobs is not used); same run directories; rules or models that cannot stack say so "
              "and run one by one")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="bioplausible", description="Train and compare biologically plausible learning rules.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("list", help="list rules, datasets, models, losses and presets")
    p.add_argument("what", nargs="?", choices=["all", "rules", "datasets", "models", "losses", "presets"])
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("train", help="train one rule")
    add_train_flags(p)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare", help="train several rules on one dataset/model and write a report")
    p.add_argument("--rules", action="append", required=True, help="comma-separated rule names")
    add_train_flags(p, rule_flag=False)
    p.add_argument("--workers", "--jobs", dest="workers", type=int, default=1,
                   help="run the rules (x seeds) in N worker processes (1 thread each)")
    p.add_argument("--seeds", help="comma-separated seeds: every rule x seed, reported as mean ± std")
    p.add_argument("--stack", action="store_true", help=STACK_HELP)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("reproduce", help="run a paper's experiment preset (or --all of them)")
    p.add_argument("name", nargs="?")
    p.add_argument("--all", action="store_true", help="every registered preset, written up in REPRODUCTION.md")
    p.add_argument("--only", help="with --all: comma-separated preset names to run")
    p.add_argument("--skip", help="with --all: comma-separated preset names to leave out")
    p.add_argument("--markdown", default="REPRODUCTION.md", help="with --all: where to write the write-up")
    p.add_argument("--scale", default="quick", help="quick (minutes) or full (as in the paper)")
    p.add_argument("--seeds", help="comma-separated seeds (default: the preset's)")
    p.add_argument("--out")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--strict", action="store_true", help="exit 1 when a check fails")
    add_trust_flag(p)
    p.add_argument("--workers", "--jobs", dest="workers", type=int, default=1,
                   help="run the jobs in N worker processes (1 thread each)")
    p.add_argument("--stack", action="store_true", help=STACK_HELP)
    p.set_defaults(func=cmd_reproduce)

    from .sweep import register

    register(sub, add_train_flags)

    p = sub.add_parser("report", help="rebuild a report from run directories or a sweep folder (mean ± std)")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--out")
    p.add_argument("--title", default="Comparison")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("data", help="list, fetch or verify datasets")
    p.add_argument("action", choices=["list", "fetch", "verify"])
    p.add_argument("names", nargs="*")
    p.add_argument("--root", help="dataset root (default: $BIOPLAUSIBLE_DATA, then the user cache)")
    p.set_defaults(func=cmd_data)

    for name, command in COMMANDS.registered():  # the rule families' own subcommands
        p = sub.add_parser(name, help=command.help)
        command.add_arguments(p)
        p.set_defaults(func=command.run)
    for name, plot in PLOTS.registered():  # the rule families' plots of a run directory
        p = sub.add_parser(name, help=plot.help)
        p.add_argument("run_dir", help=plot.run_dir_help)
        p.add_argument("--out", help=plot.out_help)
        if "trust_imports" in inspect.signature(plot.render).parameters:
            add_trust_flag(p)
        p.set_defaults(func=_plot_command(plot))
    return parser


def _plot_command(plot: Plot):
    def run(args: argparse.Namespace) -> int:
        extra = {"trust_imports": True} if getattr(args, "trust_imports", False) else {}
        print(plot.render(args.run_dir, args.out, **extra))
        return 0

    return run


BUILTIN = ("list", "train", "compare", "reproduce", "sweep", "tune", "report", "data")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in BUILTIN:  # a family's command, or --help: find the families first
        discover_families()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        msg = " ".join(str(exc).split())
        print(f"bioplausible: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bioplausible: interrupted", file=sys.stderr)
        return 130
    finally:
        from ..experiments.jobs import clear_data_cache

        clear_data_cache()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
