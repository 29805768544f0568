"""Epoch time of node-perturbation-learned feedback (np, np-dfa) relative to BP and FA, one process.

Two MNIST tasks of Lansdell, Prakash & Kording 2020: the 784-50-20-10 sigmoid MLP of Fig. 2
(½-summed MSE, batch 32) and a 784-1000-10 sigmoid MLP (batch 32). Every rule trains its own
copy of the same initial model with SGD through the minimal loop ``rule.train_step`` +
``opt.step()`` over pre-drawn index batches; the rules take turns (round-robin) for ``--reps``
repetitions on one thread; the ratio is median(rule) / median(bp) of the wall-clock epoch times
(the project's target applies to it: 1.3× BP, stretch goal 1.15×). The thread's CPU time per
epoch is reported beside it: on a shared machine it excludes the time the thread waits for a
core, so its ratio moves less with the load. Denormals are flushed to zero for every rule alike (see
``bench_feedback.py``).

    BIOPLAUSIBLE_DATA=/work/shared/datasets python benchmarks/bench_np.py
    python benchmarks/bench_np.py --quick          # smoke run: few batches

Results: ``benchmarks/results/np_speed.{json,md}`` (``_quick`` suffix for ``--quick``).
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
from _common import load_mnist, write_results

import bioplausible as bp

RULES = ["bp", "fa", "np", "np[solver=ridge]", "np-dfa", "sg"]
LIMIT = 1.30
RESULTS = Path(__file__).resolve().parent / "results"


def parse_rule(entry: str) -> tuple[str, dict]:
    """``"np[solver=ridge]"`` → ``("np", {"solver": "ridge"})``."""
    name, _, rest = entry.partition("[")
    options = dict(kv.split("=", 1) for kv in rest.rstrip("]").split(",") if kv)
    return name, options



def setup(entry: str, spec: str, example: torch.Tensor, lr: float, fb_lr: float):
    torch.manual_seed(0)
    model = bp.build_model(spec, activation="sigmoid")
    name, options = parse_rule(entry)
    rule = bp.make(name, **options)
    rule.set_seed(0)
    model = rule.prepare(model, example=example)
    groups = {"feedback": {"lr": fb_lr}} if name in ("np", "np-dfa", "sg") else {}
    opt = rule.build_optimizer(model, {"name": "sgd", "lr": lr, "groups": groups})
    return rule, model, opt


def time_epoch(rule, model, opt, loss_fn, x, y, batches) -> tuple[float, float]:
    """(wall-clock seconds, this thread's CPU seconds) of one pass over ``batches``."""
    start, cpu = time.perf_counter(), time.thread_time()
    for idx in batches:
        rule.train_step(model, x.index_select(0, idx), y.index_select(0, idx), loss_fn)
        opt.step()
        rule.after_step(model)
    return time.perf_counter() - start, time.thread_time() - cpu


def run_task(task: dict, rules: list[str], reps: int, x, y, source: str) -> dict:
    loss_fn = bp.get_loss("mse_half_sum")
    bs = task["batch_size"]
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(1))
    batches = [order[i * bs:(i + 1) * bs] for i in range(min(task["batches"], x.shape[0] // bs))]
    setups = {r: setup(r, task["model"], x[:2], 4e-4, 5e-4) for r in rules}
    for r in rules:  # warm-up
        time_epoch(*setups[r], loss_fn, x, y, batches[:20])
    times: dict[str, list[float]] = {r: [] for r in rules}
    cpu: dict[str, list[float]] = {r: [] for r in rules}
    for rep in range(reps):
        for r in rules:
            wall, used = time_epoch(*setups[r], loss_fn, x, y, batches)
            times[r].append(wall)
            cpu[r].append(used)
        print(f"  {task['name']} rep {rep + 1}/{reps}: "
              + ", ".join(f"{r} {times[r][-1]:.2f}s" for r in rules), flush=True)
    base, base_cpu = statistics.median(times["bp"]), statistics.median(cpu["bp"])
    rows = {}
    for r in rules:
        med = statistics.median(times[r])
        limited = parse_rule(r)[0] in ("np", "np-dfa")
        rows[r] = {"median_s": med, "times_s": times[r], "ratio": med / base,
                   "cpu_median_s": statistics.median(cpu[r]), "cpu_s": cpu[r],
                   "cpu_ratio": statistics.median(cpu[r]) / base_cpu,
                   "limit": LIMIT if limited else None,
                   "ok": (med / base <= LIMIT) if limited else None}
    return {"task": task["name"], "data": source, "batches": len(batches), "batch_size": bs,
            "model": task["model"], "rules": rows}


def markdown(result: dict) -> str:
    lines = ["# Node perturbation: epoch time relative to BP", "",
             f"Command: `{result['command']}`  ", f"Machine: {result['machine']}  ",
             (f"torch {result['torch']}, {result['threads']} thread, round-robin, {result['reps']} "
              f"repetitions, median; SGD lr 4e-4, feedback lr 5e-4, ½-summed MSE, c_h 0.01.  "),
             (f"Load average (1, 5, 15 min) before: {result['load_average']['before']}, after: "
              f"{result['load_average']['after']} (other processes share the machine's cores)."), ""]
    for task in result["tasks"]:
        about = (f"{task['model']}, batch {task['batch_size']}, {task['batches']} batches per "
                 f"repetition; data: {task['data']}.")
        lines += [f"## {task['task']}", "", about, "",
                  "| rule | median time (s) | ratio to BP | limit | ok | median CPU time (s) | CPU ratio |",
                  "|---|---:|---:|---:|:---:|---:|---:|"]
        for r, row in task["rules"].items():
            limit = f"{row['limit']:.2f}" if row["limit"] else "—"
            ok = {True: "yes", False: "**no**", None: "—"}[row["ok"]]
            lines.append(f"| {r} | {row['median_s']:.3f} | {row['ratio']:.3f} | {limit} | {ok} | "
                         f"{row['cpu_median_s']:.3f} | {row['cpu_ratio']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 100 batches, 2 reps")
    parser.add_argument("--reps", type=int, default=9, help="round-robin repetitions (9: bursts of load on a "
                        "shared machine move single repetitions by up to 50%%)")
    parser.add_argument("--rules", default=",".join(RULES))
    parser.add_argument("--tasks", default="small,wide")
    parser.add_argument("--batches", type=int, default=None, help="batches per repetition")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    rules = args.rules.split(",")
    if "bp" not in rules:
        rules.insert(0, "bp")
    reps = 2 if args.quick else args.reps
    n = 100 if args.quick else (args.batches or 1875)  # 1875 batches of 32 = one MNIST epoch
    tasks = {"small": {"name": "MNIST 784-50-20-10 sigmoid (Fig. 2)", "model": "mlp:784-50-20-10",
                       "batch_size": 32, "batches": n},
             "wide": {"name": "MNIST 784-1000-10 sigmoid", "model": "mlp:784-1000-10",
                      "batch_size": 32, "batches": n}}
    x, y, source = load_mnist(60000)
    result = {"torch": torch.__version__, "threads": torch.get_num_threads(), "reps": reps,
              "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
              "python": sys.version.split()[0], "tasks": []}
    load_before = os.getloadavg()
    for key in args.tasks.split(","):
        result["tasks"].append(run_task(tasks[key], rules, reps, x, y, source))
    result["load_average"] = {"before": load_before, "after": os.getloadavg()}
    result["command"] = "python benchmarks/bench_np.py" + (" " + " ".join(argv or sys.argv[1:])).rstrip()
    write_results(Path(args.out), "np_speed" + ("_quick" if args.quick else ""), result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
