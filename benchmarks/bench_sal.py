"""Epoch time of SAL relative to backprop on MNIST (the project's target: SAL ≤ 3× BP, stretch 2.5×).

The paper's Table 1 network (784-200-200-200-10, ReLU, batch 256, MSE) with equal stream widths;
every rule trains its own copy of the same initial model through ``rule.train_step`` +
``opt.step()`` (fused SGD, groups from ``rule.param_groups``) over the same pre-drawn batches;
the rules take turns (round-robin) for ``--reps`` repetitions on one thread, and the ratio is
median(rule) / median(bp). Also timed: KP (the special case Q = R = I) and SAL at 2× and 5×
downstream width.

    BIOPLAUSIBLE_DATA=/work/shared/datasets python benchmarks/bench_sal.py
    python benchmarks/bench_sal.py --quick           # smoke run: few batches

Results: ``benchmarks/results/sal_speed.{json,md}`` (``_quick`` suffix for ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from _common import load_mnist, round_robin

import bioplausible as bp

RESULTS = Path(__file__).resolve().parent / "results"
RULES = ["bp", "kp", "sal", "sal[width=2]", "sal[width=5]"]
LIMITS = {"sal": 3.0}


def parse_rule(entry: str) -> tuple[str, dict]:
    """``"sal[width=2]"`` → ``("sal", {"width": 2})`` (numbers parsed as float/int)."""
    name, _, rest = entry.partition("[")
    options = {}
    for kv in filter(None, rest.rstrip("]").split(",")):
        k, v = kv.split("=", 1)
        options[k] = float(v) if "." in v else int(v) if v.lstrip("-").isdigit() else v
    return name, options



def setup(entry: str, lr: float):
    torch.manual_seed(0)
    model = bp.build_model("mlp:784-200-200-200-10", input_shape=(784,), num_classes=10, activation="relu")
    name, options = parse_rule(entry)
    rule = bp.make(name, **options)
    rule.set_seed(0)
    model = rule.prepare(model)
    opt = torch.optim.SGD(rule.param_groups(model, lr=lr), lr=lr, fused=True)
    return rule, model, opt


def time_epoch(rule, model, opt, loss_fn, x, y, batches) -> float:
    start = time.perf_counter()
    for idx in batches:
        rule.train_step(model, x.index_select(0, idx), y.index_select(0, idx), loss_fn)
        opt.step()
        rule.after_step(model)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rules", default=",".join(RULES))
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    rules = args.rules.split(",")
    if "bp" not in rules:
        rules.insert(0, "bp")
    reps = 2 if args.quick else args.reps
    x, y, source = load_mnist(60000)
    loss_fn = bp.get_loss("mse_batchmean")
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(1))
    n_batches = 20 if args.quick else x.shape[0] // 256
    batches = [order[i * 256:(i + 1) * 256] for i in range(n_batches)]
    load_before = os.getloadavg()
    setups = {r: setup(r, args.lr) for r in rules}
    rows = round_robin(rules, lambda r, warm: time_epoch(*setups[r], loss_fn, x, y, batches[:5] if warm else batches),
                       reps, limits=LIMITS)
    command = "python benchmarks/bench_sal.py" + (" " + " ".join(argv or sys.argv[1:])).rstrip()
    result = {"command": command, "torch": torch.__version__, "threads": 1, "reps": reps,
              "batches": n_batches, "batch_size": 256, "data": source, "lr": args.lr,
              "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
              "load_average": {"before": load_before, "after": os.getloadavg()}, "rules": rows}
    lines = ["# SAL: epoch time relative to BP", "", f"Command: `{command}`  ",
             (f"Machine: {result['machine']}; torch {result['torch']}, 1 thread, round-robin, {reps} "
              f"repetitions, median; denormals flushed.  "),
             (f"Load average (1, 5, 15 min) before: {tuple(round(v, 2) for v in load_before)}, after: "
              f"{tuple(round(v, 2) for v in result['load_average']['after'])} (other processes share "
              "the cores)."),
             "", (f"784-200-200-200-10 ReLU, MSE, fused SGD lr {args.lr}, batch 256, {n_batches} batches "
                  f"per repetition; data: {source}."), "",
             "| rule | median time (s) | ratio to BP | limit | ok |", "|---|---:|---:|---:|:---:|"]
    for r, row in rows.items():
        ok = {True: "yes", False: "**no**", None: "—"}[row["ok"]]
        lim = f"{row['limit']:.1f}" if row["limit"] else "—"
        lines.append(f"| {r} | {row['median_s']:.3f} | {row['ratio']:.3f} | {lim} | {ok} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    (out / f"sal_speed{suffix}.json").write_text(json.dumps(result, indent=2))
    (out / f"sal_speed{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
