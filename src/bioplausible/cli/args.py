"""Flags shared by the subcommands: the training flags and the config they ask for."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(2, f"bioplausible: error: {message} (see `{self.prog} --help`)\n")


TRUST_HELP = ("allow a file this command reads (--config, a run's config.yaml, a preset or sweep file) to "
              "name a model or dataset by import path (pkg.module:callable), which imports and runs that "
              "code; without it such a file is refused")


def add_trust_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-imports", action="store_true", help=TRUST_HELP)


def add_train_flags(p: argparse.ArgumentParser, rule_flag: bool = True) -> None:
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
    add_trust_flag(p)


def flags_from_args(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> dict[str, Any]:
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


def config_from_args(args: argparse.Namespace, extra: dict[str, Any] | None = None):
    from ..engine.config import TrainConfig, load_config

    base = (load_config(args.config, trust_imports=getattr(args, "trust_imports", False)) if args.config
            else TrainConfig.from_dict({}))
    return base.updated(flags_from_args(args, extra), args.set)


def default_out(kind: str, config) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    from ..data.custom import run_label

    return Path("runs") / f"{kind}-{config['rule']['name']}-{run_label(config['dataset']['name'])}-{stamp}"


__all__ = ["Parser", "add_train_flags", "config_from_args", "default_out", "flags_from_args"]
