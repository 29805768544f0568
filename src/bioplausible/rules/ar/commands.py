"""The AR family's subcommand: ``bioplausible relax-diagnostic`` (Millidge et al. 2020, Fig. 2)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from ...core.hooks import Command, register_command
from ...errors import UserError


def _float_list(text: str, flag: str) -> list[float]:
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--eta-x", help="comma-separated step sizes, e.g. 0.05,0.1,0.2")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--out", default="runs/relax-diagnostic")


def cmd_relax(args: argparse.Namespace) -> int:
    from .diagnostics import run_relaxation_diagnostic

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


register_command(Command("relax-diagnostic", "activation relaxation: error to the BP gradient per iteration",
                         add_arguments, cmd_relax))
