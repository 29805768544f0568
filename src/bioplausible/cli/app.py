"""Command line: ``bioplausible list | train | compare | reproduce | sweep | tune | report | relax-diagnostic | data``.

User errors (unknown names, bad values, missing data) print one line and exit with status 2,
before any run directory is written.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(2, f"bioplausible: error: {message} (see `{self.prog} --help`)\n")


def _add_train_flags(p: argparse.ArgumentParser, rule_flag: bool = True) -> None:
    from ..engine.config import DEFAULTS as D

    rec = " (or the rule's recommended value)"
    if rule_flag:
        p.add_argument("--rule", help="learning rule (see `bioplausible list rules`, `bioplausible explain RULE`)")
    p.add_argument("--dataset", help=f"dataset name (default {D['dataset']['name']}; see `bioplausible list datasets`)")
    p.add_argument("--model", help=f"model spec, e.g. mlp:784-500-10 or lenet (default {D['model']['spec']}{rec})")
    p.add_argument("--loss", help="loss: mse, mse_sum, cross_entropy, bce, ... (default auto: cross_entropy "
                                  "for classes, bce for multi-label data)")
    p.add_argument("--optimizer", help=f"any torch.optim optimizer by name (default {D['optimizer']['name']})")
    p.add_argument("--lr", type=float, help=f"learning rate (default {D['optimizer']['lr']}{rec})")
    p.add_argument("--epochs", type=int, help=f"default {D['epochs']}")
    p.add_argument("--batch-size", type=int, help=f"default {D['batch_size']}{rec}")
    p.add_argument("--seed", type=int, help=f"default {D['seed']}")
    p.add_argument("--device", help=f"cpu, cuda, cuda:N or auto (default {D['device']})")
    p.add_argument("--dtype", help=f"float32 or float64 (default {D['dtype']})")
    p.add_argument("--probe-every", type=int, help="measure alignment with BP every N steps (0: off; "
                                                   "default 0 for train, 100 for compare)")
    p.add_argument("--data-root", help="dataset root (default: $BIOPLAUSIBLE_DATA, then the user cache)")
    p.add_argument("--config", help="YAML config file (flags and --set override it)")
    p.add_argument("--set", action="append", default=[], metavar="[RULE:]KEY=VALUE",
                   help="override a config key, e.g. --set optimizer.lr=0.01 --set rule.decay=1e-4; "
                        "RULE:KEY=VALUE sets it for one rule only, e.g. --set np:optimizer.groups.feedback.lr=5e-4")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (per rule) as YAML and exit without training")
    p.add_argument("--out", help="run directory (default: runs/<command>-<rule>-<dataset>-<time>)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    p.add_argument("--logger", help="also log metrics to: tensorboard (events and hparams in RUN_DIR/tensorboard) "
                                    "or wandb (Weights & Biases; WANDB_MODE=offline writes RUN_DIR/wandb)")


def _flags(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config mapping the command-line flags ask for (only what was given)."""
    flags: dict[str, Any] = {}
    if getattr(args, "rule", None):
        flags["rule"] = {"name": args.rule}
    if args.dataset:
        flags["dataset"] = {"name": args.dataset}
    if args.data_root:
        flags.setdefault("dataset", {})["root"] = args.data_root
    if args.model:
        flags["model"] = {"spec": args.model}
    if args.loss:
        flags["loss"] = args.loss
    if args.optimizer:
        flags.setdefault("optimizer", {})["name"] = args.optimizer
    if args.lr is not None:
        flags.setdefault("optimizer", {})["lr"] = args.lr
    for key in ("epochs", "batch_size", "seed", "device", "dtype", "probe_every"):
        if getattr(args, key) is not None:
            flags[key] = getattr(args, key)
    if args.quiet:
        flags["progress"] = False
    if getattr(args, "logger", None):
        flags["logger"] = args.logger
    flags.update(extra or {})
    return flags


def _config_from_args(args: argparse.Namespace, extra: dict[str, Any] | None = None):
    from ..engine.config import TrainConfig, load_config

    base = load_config(args.config) if args.config else TrainConfig.from_dict({})
    return base.updated(_flags(args, extra), args.set)


def _default_out(kind: str, config) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    from ..data.custom import run_label

    return Path("runs") / f"{kind}-{config['rule']['name']}-{run_label(config['dataset']['name'])}-{stamp}"


def cmd_list(args: argparse.Namespace) -> int:
    what = args.what or "all"
    if getattr(args, "options", False) and what not in ("all", "rules"):
        raise UserError("--options lists the rules' options: use `bioplausible list rules --options`")
    if what in ("all", "rules"):
        from .._registry import RULES, list_rules

        print("rules:")
        for name in list_rules():
            cls = RULES.get(name)
            print(f"  {name:10s} {cls.summary}  [{cls.paper}]")
            if getattr(args, "options", False):
                from ..core.rule_info import option_lines

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
    from ..core.rule_info import explain

    print(explain(args.rule))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ..experiments.jobs import check_jobs, plan, resume_job, run_job

    if args.resume:
        if args.config or args.out:
            raise UserError("--resume continues a run with its own config.yaml and directory; "
                            "drop --config/--out (only --epochs can be extended)")
        job = resume_job(args.resume, _flags(args), args.set)
    else:
        if not args.rule and not args.config and not any(
                str(x).split("=", 1)[0].strip() == "rule.name" for x in args.set):
            raise UserError("train needs a rule: pass --rule NAME (e.g. `bioplausible train --rule fa "
                            "--dataset mnist`; `bioplausible list rules` lists them) or --config FILE")
        config = _config_from_args(args)
        if args.print_config:
            print(config.to_yaml(), end="")
            return 0
        job = plan(config, out=Path(args.out) if args.out else _default_out("train", config))[0]
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
    from ..experiments.jobs import check_run_dir

    rules = [r.strip() for item in args.rules for r in item.split(",") if r.strip()]
    if not rules:
        raise UserError("--rules needs at least one rule name, e.g. --rules bp,fa,dfa")
    twice = sorted({r for r in rules if rules.count(r) > 1})
    if twice:
        raise UserError(f"--rules names {twice[0]!r} twice; each rule is one run (use --set or a preset "
                        f"for two settings of one rule)")
    extra = {"probe_every": args.probe_every if args.probe_every is not None else 100}
    base = _config_from_args(args, extra)
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
    from .sweep import compare_seeds
    from ..experiments.figures import check_format
    from ..experiments.jobs import parse_seeds

    # one layout with or without --seeds: <out>/<rule>-seed<k>/, sweep.json, report.md, results.csv
    seeds = parse_seeds(args.seeds) if args.seeds is not None else [base["seed"]]
    return compare_seeds(base, rules, seeds, out, _workers(args), fmt=check_format(args.format))


def cmd_reproduce(args: argparse.Namespace) -> int:
    from ..experiments.presets import format_report, run_preset
    from ..experiments.jobs import parse_seeds

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
                        workers=_workers(args), overrides=overrides)
    print(format_report(report))
    print(f"\nresults: {report['out_dir']}")
    failed = [c for c in report["checks"] if not c["passed"]]
    return 1 if failed and args.strict else 0


def cmd_report(args: argparse.Namespace) -> int:
    from .sweep import cmd_report as report_runs_or_sweep

    return report_runs_or_sweep(args)


def _workers(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise UserError(f"--workers/--jobs must be at least 1, got {args.workers}")
    return args.workers


def _float_list(text: str, flag: str) -> list[float]:
    import math

    values = []
    for item in text.split(","):
        try:
            v = float(item)
        except ValueError:
            v = float("nan")
        if not (math.isfinite(v) and v > 0):
            raise UserError(f"{flag} {text!r}: {item.strip()!r} is not a positive number; e.g. {flag} 0.05,0.1")
        values.append(v)
    return values


def cmd_relax(args: argparse.Namespace) -> int:
    from ..rules.ar.diagnostics import run_relaxation_diagnostic

    eta = _float_list(args.eta_x, "--eta-x") if args.eta_x is not None else None
    if args.steps < 1:
        raise UserError(f"--steps must be at least 1, got {args.steps}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {args.out!r} is a file; give a folder")
    kwargs: dict[str, Any] = {"dataset": args.dataset, "steps": args.steps}
    if eta:
        kwargs["eta_xs"] = eta
    result = run_relaxation_diagnostic(args.out, **kwargs) or {}
    for m in result.get("measurements", []):
        chk = m.get("checks", {})
        folds = ", ".join(f"{f:.3g}x" for f in chk.get("fold_reduction", []))
        print(f"{m['label']}: error reduction per hidden layer at eta_x={chk.get('eta_x')} after "
              f"{args.steps} iterations: {folds} (>= 100x in every layer: "
              f"{'yes' if chk.get('passed') else 'no'}; larger eta_x no slower: "
              f"{'yes' if chk.get('larger_eta_no_slower') else 'no'})")
    print(f"wrote {Path(args.out) / 'convergence.json'} and {Path(args.out) / 'convergence.png'}")
    return 0


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
    from .. import __version__

    parser = _Parser(prog="bioplausible", description="Train and compare biologically plausible learning rules.",
                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"bioplausible {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

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
    _add_train_flags(p)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare", help="train several rules on one dataset/model and write a report")
    p.add_argument("--rules", action="append", required=True, help="comma-separated rule names")
    _add_train_flags(p, rule_flag=False)
    p.add_argument("--workers", "--jobs", dest="workers", type=int, default=1,
                   help="run the rules (x seeds) in N worker processes (1 thread each)")
    p.add_argument("--seeds", help="comma-separated seeds: every rule x seed, reported as mean ± std "
                                   "(default: the config's seed, 0)")
    p.add_argument("--format", default="png", help="figure format: png, pdf or svg (default png)")
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
    p.add_argument("--epochs", type=int, help="train every run this many epochs (instead of the scale's)")
    p.add_argument("--set", action="append", default=[], metavar="[RULE:]KEY=VALUE",
                   help="override a config key in every run, e.g. --set dataset.subset=5000")
    p.add_argument("--workers", "--jobs", dest="workers", type=int, default=1,
                   help="run the jobs in N worker processes (1 thread each)")
    p.set_defaults(func=cmd_reproduce)

    from .sweep import register

    register(sub, _add_train_flags)

    p = sub.add_parser("report", help="one report over run, compare, sweep and reproduce folders (mean ± std "
                                      "per rule and configuration)")
    p.add_argument("run_dirs", nargs="+", metavar="FOLDER")
    p.add_argument("--out", help="report folder (default: the first folder, or a run's parent)")
    p.add_argument("--title", default="Comparison")
    p.add_argument("--format", default="png", help="figure format: png, pdf or svg (default png)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("relax-diagnostic", help="activation relaxation: error to the BP gradient per iteration")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--eta-x", help="comma-separated step sizes, e.g. 0.05,0.1,0.2")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--out", default="runs/relax-diagnostic")
    p.set_defaults(func=cmd_relax)

    p = sub.add_parser("data", help="list, fetch or verify datasets")
    p.add_argument("action", choices=["list", "fetch", "verify"])
    p.add_argument("names", nargs="*")
    p.add_argument("--root", help="dataset root (default: $BIOPLAUSIBLE_DATA, then the user cache)")
    p.set_defaults(func=cmd_data)

    def cmd_generate(args: argparse.Namespace) -> int:
        from ..rules.bidirectional.generate import render_run

        print(render_run(args.run_dir, args.out))
        return 0

    p = sub.add_parser("generate", help="BFA: render the generative network's image for each label (PNG)")
    p.add_argument("run_dir", help="run directory of a bfa training run")
    p.add_argument("--out", help="PNG path (default: RUN_DIR/generated.png)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("figure", help="draw a paper figure from a run, compare, sweep or reproduce folder "
                                      "(np-fig2, np-fig4, np-autoencoder)")
    p.add_argument("name", help="np-fig2, np-fig4 or np-autoencoder")
    p.add_argument("run_dir", metavar="FOLDER")
    p.add_argument("--out", help="output folder (default: FOLDER)")
    p.add_argument("--format", default="png", help="png, pdf or svg (default png)")
    p.set_defaults(func=cmd_figure)

    p = sub.add_parser("ghost-diagnostics", help="plot a ghost-unit run's Figs 3-5 diagnostics")
    p.add_argument("run_dir")
    p.add_argument("--out", help="PNG path (default: RUN_DIR/ghost_diagnostics.png)")
    p.set_defaults(func=cmd_ghost_diagnostics)
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


def cmd_ghost_diagnostics(args: argparse.Namespace) -> int:
    from ..rules.ghost.diagnostics import plot_ghost_diagnostics

    print(plot_ghost_diagnostics(args.run_dir, args.out))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
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
