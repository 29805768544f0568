"""Epoch time of the feedback-pathway rules relative to backprop, in one process.

Two tasks: MNIST 784-1000-10 sigmoid MLP (MSE, batch 100, 600 batches = one epoch) and LeNet-5
on CIFAR-10 (cross-entropy, batch 100, 100 batches). Every rule trains its own copy of the same
initial model with SGD through the minimal loop ``rule.train_step`` + ``opt.step()`` +
``rule.after_step`` over pre-drawn index batches (``torch.optim.SGD(fused=True)`` for every
rule; ``kp`` hands its decay to it by default; ``kp[decay_in=backward]`` adds it in the backward pass); the rules take turns (round-robin) for
``--reps`` repetitions on one thread, and the ratio is median(rule) / median(bp).

    BIOPLAUSIBLE_DATA=/work/shared/datasets python benchmarks/bench_feedback.py
    python benchmarks/bench_feedback.py --quick          # smoke run: few batches

Without the datasets (or without ``bioplausible.data``) random tensors of the same shapes are
used, and the output says so.

Denormal floats (from saturated sigmoids and their tiny derivatives) make x86 arithmetic 2-3×
slower in a way that depends on each run's weights, not on the rule's cost (measured here: the
same uSF epoch 3× slower with them); the benchmark flushes them to zero for every rule alike
(``torch.set_flush_denormal(True)``; ``--keep-denormals`` turns this off).

Results: ``benchmarks/results/feedback_speed.{json,md}`` (``_quick`` suffix for ``--quick``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from _common import write_results

import bioplausible as bp

RULES = ["bp", "fa", "usf", "brsf", "frsf", "kp", "kp[decay_in=backward]", "wm", "dfa"]
LIMITS = {"fa": 1.10, "usf": 1.10, "brsf": 1.10, "frsf": 1.10, "kp": 1.10, "dfa": 1.05, "wm": 2.0}


def parse_rule(entry: str) -> tuple[str, dict]:
    """``"kp[decay_in=optimizer]"`` → ``("kp", {"decay_in": "optimizer"})``."""
    name, _, rest = entry.partition("[")
    options = dict(kv.split("=", 1) for kv in rest.rstrip("]").split(",") if kv)
    return name, options
RESULTS = Path(__file__).resolve().parent / "results"


def load(name: str, shape: tuple[int, ...], n: int, flatten: bool):
    """Training tensors of ``name``, or random ones of the same shape (with the reason)."""
    try:
        data = bp.load_dataset(name, flatten=flatten)
        return data.train.x.contiguous(), data.train.y.long(), "real"
    except Exception as exc:  # noqa: BLE001 - any failure falls back to random data, reported
        gen = torch.Generator().manual_seed(0)
        x = torch.rand((n, *shape), generator=gen)
        y = torch.randint(0, 10, (n,), generator=gen)
        return x, y, f"random ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"


def setup(entry: str, model_spec: str, input_shape, lr: float, seed: int = 0):
    torch.manual_seed(seed)
    model = bp.build_model(model_spec, input_shape=input_shape, num_classes=10,
                           **({"activation": "sigmoid"} if model_spec.startswith("mlp") else {}))
    name, options = parse_rule(entry)
    rule = bp.make(name, **options)
    rule.set_seed(seed)
    model = rule.prepare(model)
    opt = torch.optim.SGD(rule.param_groups(model, lr=lr), lr=lr, fused=True)
    return rule, model, opt


def time_epoch(rule, model, opt, loss_fn, x, y, batches: list[torch.Tensor]) -> float:
    start = time.perf_counter()
    for idx in batches:
        rule.train_step(model, x.index_select(0, idx), y.index_select(0, idx), loss_fn)
        opt.step()
        rule.after_step(model)
    return time.perf_counter() - start


def run_task(task: dict, rules: list[str], reps: int, n_batches: int) -> dict:
    x, y, source = load(task["dataset"], task["shape"], task["n"], task["flatten"])
    loss_fn = bp.get_loss(task["loss"])
    gen = torch.Generator().manual_seed(1)
    order = torch.randperm(x.shape[0], generator=gen)
    batches = [order[i * 100:(i + 1) * 100] for i in range(min(n_batches, x.shape[0] // 100))]
    setups = {r: setup(r, task["model"], task["shape"], task["lr"]) for r in rules}
    for r in rules:  # warm-up: one pass of a few batches each
        time_epoch(*setups[r], loss_fn, x, y, batches[:5])
    times: dict[str, list[float]] = {r: [] for r in rules}
    for rep in range(reps):
        for r in rules:
            times[r].append(time_epoch(*setups[r], loss_fn, x, y, batches))
        print(f"  {task['name']} rep {rep + 1}/{reps}: "
              + ", ".join(f"{r} {times[r][-1]:.2f}s" for r in rules), flush=True)
    base = statistics.median(times["bp"])
    rows = {}
    for r in rules:
        med = statistics.median(times[r])
        rows[r] = {"median_s": med, "times_s": times[r], "ratio": med / base,
                   "limit": LIMITS.get(parse_rule(r)[0])}
        rows[r]["ok"] = med / base <= rows[r]["limit"] if rows[r]["limit"] else None
    return {"task": task["name"], "data": source, "batches": len(batches), "batch_size": 100,
            "model": task["model"], "loss": task["loss"], "lr": task["lr"], "rules": rows}


def markdown(result: dict, command: str) -> str:
    lines = ["# Feedback rules: epoch time relative to BP", "",
             f"Command: `{command}`  ", f"Machine: {result['machine']}  ",
             (f"torch {result['torch']}, {result['threads']} thread, round-robin, "
              f"{result['reps']} repetitions, median; denormals flushed: "
              f"{result['flush_denormal']}.  "),
             (f"Load average (1, 5, 15 min) before: {result['load_average']['before']}, after: "
              f"{result['load_average']['after']} (other processes share the machine's cores)."),
             ""]
    for task in result["tasks"]:
        lines += [f"## {task['task']}", "",
                  (f"{task['model']}, {task['loss']}, fused SGD lr {task['lr']}, batch 100, "
                   f"{task['batches']} batches per repetition; data: {task['data']}."), "",
                  "| rule | median time (s) | ratio to BP | limit | ok |",
                  "|---|---:|---:|---:|:---:|"]
        for r, row in task["rules"].items():
            limit = f"{row['limit']:.2f}" if row["limit"] else "—"
            ok = {True: "yes", False: "**no**", None: "—"}[row["ok"]]
            lines.append(f"| {r} | {row['median_s']:.3f} | {row['ratio']:.3f} | {limit} | {ok} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 batches, 2 reps")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rules", default=",".join(RULES))
    parser.add_argument("--tasks", default="mnist,cifar10")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--keep-denormals", action="store_true",
                        help="do not flush denormal floats to zero (see the module docstring)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if not args.keep_denormals:
        torch.set_flush_denormal(True)
    rules = args.rules.split(",")
    if "bp" not in rules:
        rules.insert(0, "bp")
    reps = 2 if args.quick else args.reps
    tasks = {
        "mnist": {"name": "MNIST 784-1000-10 sigmoid MLP", "dataset": "mnist", "shape": (784,),
                  "n": 60000, "flatten": True, "model": "mlp:784-1000-10", "loss": "mse",
                  "lr": 0.05, "batches": 20 if args.quick else 600},
        "cifar10": {"name": "LeNet-5 on CIFAR-10", "dataset": "cifar10", "shape": (3, 32, 32),
                    "n": 50000, "flatten": False, "model": "lenet", "loss": "cross_entropy",
                    "lr": 0.01, "batches": 10 if args.quick else 100},
    }
    result = {"torch": torch.__version__, "threads": torch.get_num_threads(), "reps": reps,
              "flush_denormal": not args.keep_denormals,
              "machine": f"{platform.machine()} {platform.processor() or ''} "
                         f"{os.cpu_count()} CPUs".strip(),
              "python": sys.version.split()[0], "tasks": []}
    load_before = os.getloadavg()
    for key in args.tasks.split(","):
        task = tasks[key]
        result["tasks"].append(run_task(task, rules, reps, task["batches"]))
    result["load_average"] = {"before": load_before, "after": os.getloadavg()}
    command = "python benchmarks/bench_feedback.py" + (" " + " ".join(argv or sys.argv[1:])).rstrip()
    result["command"] = command
    out = Path(args.out)
    write_results(out, "feedback_speed" + ("_quick" if args.quick else ""), result, markdown(result, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
