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
from .args import (
    Parser,
    add_train_flags,
    add_trust_flag,
    config_from_args,
    default_out,
    flags_from_args,
)


def cmd_list(args: argparse.Namespace) -> int:
    what = args.what or "all"
    if getattr(args, "options", False) and what not in ("all", "rules"):
        raise UserError("--options lists the rules' options: use `bioplausible list rules --options`")
    if what in ("all", "rules"):
        from ..rules.registry import RULES, list_rules

        print("rules:")
        for name in list_rules():
            cls = RULES.get(name)
            print(f"  {name:10s} {cls.summary}  [{cls.paper}]")
            if getattr(args, "options", False):
                from ..engine.rule_info import option_lines

                for line in option_lines(cls):
                    print(f"      {line}")
    if what in ("all", "datasets"):
        from ..data import list_datasets

        print("datasets:  " + ", ".join(list_datasets()) + "   (or npz:PATH, pkg.module:callable)")
    if what in ("all", "models"):
        from ..models import list_models

        print("models:    " + ", ".join(list_models()) + "   (e.g. mlp:784-500-10,activation=sigmoid; "
              "or pkg.module:callable,key=value)")
    if what in ("all", "losses"):
        from ..core.losses import list_losses

        print("losses:    " + ", ".join(list_losses()))
    if what in ("all", "presets"):
        from ..experiments.presets import get_preset, list_presets

        print("presets:")
        for name in list_presets():
            p = get_preset(name)
            print(f"  {name:28s} {p.title}  (scales: {', '.join(p.scales)})")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from ..engine.rule_info import explain

    print(explain(args.rule))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ..experiments.jobs import check_jobs, plan, resume_job, run_job

    if args.resume:
        if args.config or args.out:
            raise UserError("--resume continues a run with its own config.yaml and directory; "
                            "drop --config/--out (only --epochs can be extended)")
        job = resume_job(args.resume, flags_from_args(args), args.set, trust_imports=args.trust_imports)
    else:
        if not args.rule and not args.config and not any(
                str(x).split("=", 1)[0].strip() == "rule.name" for x in args.set):
            raise UserError("train needs a rule: pass --rule NAME (e.g. `bioplausible train --rule fa "
                            "--dataset mnist`; `bioplausible list rules` lists them) or --config FILE")
        config = config_from_args(args)
        if args.print_config:
            print(config.to_yaml(), end="")
            return 0
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

    rules = [r.strip() for item in args.rules for r in item.split(",") if r.strip()]
    if not rules:
        raise UserError("--rules needs at least one rule name, e.g. --rules bp,fa,dfa")
    twice = sorted({r for r in rules if rules.count(r) > 1})
    if twice:
        raise UserError(f"--rules names {twice[0]!r} twice; each rule is one run (use --set or a preset "
                        f"for two settings of one rule)")
    extra = {"probe_every": args.probe_every if args.probe_every is not None else 100}
    base = config_from_args(args, extra)
    from ..engine.config import PER_RULE

    stray = [r for r in (base.explicit().get(PER_RULE) or {}) if r.lower() not in {x.lower() for x in rules}]
    if stray:
        raise UserError(f"--set {stray[0]}:...: rule {stray[0]!r} is not compared here (--rules "
                        f"{','.join(rules)}); add it to --rules or drop the setting")
    from ..data.custom import run_label

    if args.print_config:
        for r in rules:
            print(f"# {r}\n" + base.updated({"rule": {"name": r}}).to_yaml())
        return 0
    out = Path(args.out) if args.out else Path("runs") / (
        f"compare-{run_label(base['dataset']['name'])}-{time.strftime('%Y%m%d-%H%M%S')}")
    check_run_dir(out)
    from ..experiments.figures import check_format
    from ..experiments.seeds import parse_seeds
    from .sweep import compare_seeds

    # one layout with or without --seeds: <out>/<rule>-seed<k>/, sweep.json, report.md, results.csv
    seeds = parse_seeds(args.seeds) if args.seeds is not None else [base["seed"]]
    return compare_seeds(base, rules, seeds, out, _workers(args), fmt=check_format(args.format),
                         stack=args.stack)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from ..experiments.reproduce import format_report, run_preset
    from ..experiments.seeds import parse_seeds

    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    if args.all or args.only or args.skip:
        if args.epochs is not None or args.set:
            raise UserError("--epochs/--set change one preset's runs; with --all the presets keep their own "
                            "settings (run `bioplausible reproduce NAME --epochs N` per preset)")
        from ..experiments.reproduce import cmd_reproduce_all

        return cmd_reproduce_all(args, seeds, _workers(args))
    if not args.name:
        raise UserError("give a preset name (see `bioplausible list presets`) or --all")
    overrides = ([f"epochs={args.epochs}"] if args.epochs is not None else []) + list(args.set)
    report = run_preset(args.name, args.scale, out=args.out, progress=not args.quiet, seeds=seeds,
                        workers=_workers(args), stack=args.stack, trust_imports=args.trust_imports,
                        overrides=overrides)
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


EXAMPLES = """examples:
  bioplausible list rules --options            every rule with its options, defaults and accepted values
  bioplausible explain np                      one rule: options, recommended settings, supported models
  bioplausible train --rule fa --dataset mnist --epochs 1 --set dataset.subset=2000
  bioplausible compare --rules bp,fa,dfa,kp,np --dataset fashion-mnist --model mlp:784-256-256-10 \\
      --seeds 0,1,2 --set np:optimizer.groups.feedback.lr=5e-4 --out runs/study
  bioplausible report runs/study runs/other-study --format pdf
  bioplausible reproduce np-fig2-mnist --scale quick
  bioplausible figure np-fig2 RUN_DIR
"""


def build_parser() -> argparse.ArgumentParser:
    from .._version import __version__

    parser = Parser(prog="bioplausible", description="Train and compare biologically plausible learning rules.",
                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"bioplausible {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("list", help="list rules, datasets, models, losses and presets")
    p.add_argument("what", nargs="?", choices=["all", "rules", "datasets", "models", "losses", "presets"])
    p.add_argument("--options", action="store_true",
                   help="with rules: every option with its default, accepted values and meaning")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("explain", help="one rule: options (default, accepted values, meaning), recommended "
                                       "settings and the models it trains")
    p.add_argument("rule")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("train", help="train one rule")
    add_train_flags(p)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare", help="train several rules on one dataset/model and write a report")
    p.add_argument("--rules", action="append", required=True, help="comma-separated rule names")
    add_train_flags(p, rule_flag=False)
    p.add_argument("--workers", "--jobs", dest="workers", type=int, default=1,
                   help="run the rules (x seeds) in N worker processes (1 thread each)")
    p.add_argument("--seeds", help="comma-separated seeds: every rule x seed, reported as mean ± std "
                                   "(default: the config's seed, 0)")
    p.add_argument("--format", default="png", help="figure format: png, pdf or svg (default png)")
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
    p.add_argument("--epochs", type=int, help="train every run this many epochs (instead of the scale's)")
    p.add_argument("--set", action="append", default=[], metavar="[RULE:]KEY=VALUE",
                   help="override a config key in every run, e.g. --set dataset.subset=5000")
    p.add_argument("--workers", "--jobs", dest="workers", type=int, default=1,
                   help="run the jobs in N worker processes (1 thread each)")
    p.add_argument("--stack", action="store_true", help=STACK_HELP)
    p.set_defaults(func=cmd_reproduce)

    from .sweep import register

    register(sub, add_train_flags)

    p = sub.add_parser("report", help="one report over run, compare, sweep and reproduce folders (mean ± std "
                                      "per rule and configuration)")
    p.add_argument("run_dirs", nargs="+", metavar="FOLDER")
    p.add_argument("--out", help="report folder (default: the first folder, or a run's parent)")
    p.add_argument("--title", default="Comparison")
    p.add_argument("--format", default="png", help="figure format: png, pdf or svg (default png)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("data", help="list, fetch or verify datasets")
    p.add_argument("action", choices=["list", "fetch", "verify"])
    p.add_argument("names", nargs="*")
    p.add_argument("--root", help="dataset root (default: $BIOPLAUSIBLE_DATA, then the user cache)")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("figure", help="draw a paper figure from a run, compare, sweep or reproduce folder "
                                      "(np-fig2, np-fig4, np-autoencoder)")
    p.add_argument("name", help="np-fig2, np-fig4 or np-autoencoder")
    p.add_argument("run_dir", metavar="FOLDER")
    p.add_argument("--out", help="output folder (default: FOLDER)")
    p.add_argument("--format", default="png", help="png, pdf or svg (default png)")
    p.set_defaults(func=cmd_figure)

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


def cmd_figure(args: argparse.Namespace) -> int:
    from ..experiments.paper_figures import draw

    result = draw(args.name, args.run_dir, args.out, args.format)
    for check in result.get("checks", []):
        other = check.get("fa", check.get("bp"))
        print(f"{check['metric']}: np {check['np']:.4g} vs {other:.4g} ({check['want']}): "
              f"{'ok' if check['passed'] else 'FAILED'}")
    figures = result["figure"] if isinstance(result["figure"], list) else [result["figure"]]
    print("\n".join(figures))
    return 0


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
    from ..engine.runtime import keep_freed_memory

    keep_freed_memory()  # every training step reuses its freed blocks (no page faults per step)
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
