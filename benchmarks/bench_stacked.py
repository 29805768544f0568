"""Stacked runs against the same runs one after another: run-steps per second, one process, one thread.

For each task, R = 8 runs of one rule (seeds 0..7: their own initialisation, data order and rule
randomness) train ``--steps`` steps each, either

* **sequential**: each run through the ordinary loop ``rule.train_step`` + ``opt.step()`` +
  ``rule.after_step``, the runs one after another, or
* **stacked**: one :mod:`bioplausible.engine.stacked` model holding the 8 runs, one batched step for all.

The two take turns (round-robin) for ``--reps`` repetitions; the speed-up is the ratio of the
median run-steps per second. Times are this thread's CPU time (``time.thread_time``): the machine
is shared with other processes, and CPU time leaves out the time the thread waits for a core (the
wall-clock medians are reported beside it). The load average before and after is recorded.

The FLOP-rate limit: the multiply-adds a run-step needs (forward, backward, weight gradients, and
the rule's extra passes, counted from the layer sizes) divided by the rate ``torch.mm`` reaches on
one thread in this process for a large product (measured here, in the same run):
the run-steps per second no implementation can beat on this core.

Both sides run with the allocator setting the CLI uses (:func:`bioplausible.engine.runtime.keep_freed_memory`:
glibc keeps freed blocks instead of returning them to the kernel, so a step's temporaries are not
fresh pages every step); ``BIOPLAUSIBLE_MALLOC=system`` measures with glibc's defaults. Minor page
faults per run-step are recorded for both sides.

    BIOPLAUSIBLE_DATA=/work/shared/datasets python benchmarks/bench_stacked.py
    python benchmarks/bench_stacked.py --quick      # smoke run
    python benchmarks/bench_stacked.py --device cuda --out benchmarks/results/gpu   # the GPU check

On a GPU (``--device cuda``) the times are wall-clock after ``torch.cuda.synchronize()`` (the
thread's CPU time says nothing about the device's work) and the FLOP limit is left out.

Results: ``benchmarks/results/stacked_speed.{json,md}`` (``_quick`` suffix for ``--quick``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from _common import load_mnist, write_results

import bioplausible as bp
from bioplausible.engine.runtime import keep_freed_memory
from bioplausible.engine.stacked import epoch_orders, gather, stack_from
from bioplausible.experiments.reproduce import git_commit

RESULTS = Path(__file__).resolve().parent / "results"
R = 8

# name -> task: model, batch, loss, learning rate, the rules timed, the speed-up asked for
TASKS = {
    "np-fig2": {"title": "NP Fig. 2 net 784-50-20-10 sigmoid, batch 32 (½-summed MSE)",
                "model": "mlp:784-50-20-10", "activation": "sigmoid", "batch": 32, "loss": "mse_half_sum",
                "lr": 4e-4, "rules": ["bp", "fa", "np"], "target": 3.0, "stretch": 5.0},
    "bfa-400": {"title": "BFA Table 1 net 784-400-10 tanh, batch 128 (summed BCE)",
                "model": "mlp:784-400-10", "activation": "tanh", "batch": 128, "loss": "bce_sum",
                "lr": 1e-4, "rules": ["bfa", "bdfa"], "target": 1.3},
    "sal-3x200": {"title": "SAL Table 1 net 784-200-200-200-10 relu, batch 256 (batch-mean MSE)",
                  "model": "mlp:784-200-200-200-10", "activation": "relu", "batch": 256,
                  "loss": "mse_batchmean", "lr": 0.3, "rules": ["sal", "kp"], "target": 1.3},
    # the ghost presets' networks (ghost-ma-500, ghost-mb-500: no biases, sigmoid output, their
    # inits) with the rules at those presets' TF options (the rules' defaults; diagnostics off);
    # the loss is only reported by the ghost rules, and is BP's loss
    "ghost-500-b100": {"title": "ghost MA-500 784-500-10 sigmoid, batch 100 (ghost-ma-500 preset, TF; bp on the same net)",
                       "model": "mlp:784-500-10", "activation": "sigmoid", "batch": 100,
                       "model_options": {"output_activation": "sigmoid", "bias": False, "init": "uniform:0.2"},
                       "rule_options": {"ghost-ma": {"feedback": "transpose", "dt": 0.001, "tau": 0.01, "beta": 10.0,
                                                     "free_steps": 200, "clamped_steps": 200, "eta_w": 0.1,
                                                     "eta_v": 0.05}},
                       "loss": "mse_batchmean", "lr": 0.05, "rules": ["ghost-ma", "bp"], "target": 1.0},
    "ghost-500-b1": {"title": "ghost MB-500 784-500-10 sigmoid, batch 1 (ghost-mb-500 preset, TF; bp on the same net)",
                     "model": "mlp:784-500-10", "activation": "sigmoid", "batch": 1,
                     "model_options": {"output_activation": "sigmoid", "bias": False, "init": "uniform:0.05"},
                     "rule_options": {"ghost-mb": {"feedback": "transpose", "dt": 0.005, "tau": 0.01, "beta": 0.1,
                                                   "free_steps": 100, "clamped_steps": 40, "eta_w": [4.0, 0.04],
                                                   "eta_v": 20.0, "ghost_units": 5}},
                     "loss": "mse_batchmean", "lr": 0.01, "rules": ["ghost-mb", "bp"], "target": 1.0},
}


def build_runs(task: dict, rule_name: str, example: torch.Tensor):
    runs = []
    for seed in range(R):
        torch.manual_seed(seed)
        model = bp.build_model(task["model"], activation=task["activation"],
                               **task.get("model_options", {})).to(example.device)
        rule = bp.make(rule_name, **task.get("rule_options", {}).get(rule_name, {}))
        rule.set_seed(seed)
        model = rule.prepare(model, example=example)
        groups = {"feedback": {"lr": 5e-4 if rule_name in ("np", "np-dfa") else 5e-5}} \
            if rule_name in ("np", "np-dfa", "bdfa") else {}
        opt = rule.build_optimizer(model, {"name": "sgd", "lr": task["lr"], "groups": groups})
        runs.append((rule, model, opt))
    return runs


def run_bytes(rule, model) -> int:
    """Bytes of one run's trained state: its model's tensors and the rule's own."""
    tensors = list(model.state_dict().values()) + list(rule.owned.state_dict().values())
    return _unique_bytes(tensors)


def _unique_bytes(tensors) -> int:
    """Bytes of ``tensors``, each storage region counted once (a rule may own a model tensor)."""
    seen, total = set(), 0
    for t in tensors:
        if t is None:
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel())
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def stack_bytes(stack) -> int:
    """Bytes of the stack's state: weights, biases and every stacked rule tensor."""
    tensors = [*stack.net.W, *stack.net.b]
    for pairs in stack.feedback_tensors().values():
        tensors += [t for t, _ in pairs]
    return _unique_bytes(tensors)


def flops_per_run_step(task: dict, rule: str) -> float:
    """Multiply-adds × 2 of one run-step: forward and weight gradient of every layer, the error
    at the input of every layer but the first (DFA: ``e D_l``), and for ``np`` the noisy forward
    of every layer but the first and the regression product of every learned ``B``."""
    sizes = [int(s) for s in task["model"].split(":")[1].split("-")]
    if rule.startswith("ghost-"):
        return ghost_flops(sizes, task["batch"], rule, task["rule_options"][rule])
    layers = list(itertools.pairwise(sizes))
    every = sum(a * b for a, b in layers)
    upper = sum(a * b for a, b in layers[1:])
    if rule == "dfa":
        backward = sum(a * sizes[-1] for a, _ in layers[1:])
    else:
        backward = upper
    extra = 2 * upper if rule in ("np", "np-dfa") else 0
    if rule == "kp":
        extra = 0  # B takes W's gradient: no second product
    if rule == "bfa":  # the generative net on the class rows, the class sums, its weight gradients
        extra = (2 * sizes[-1] * every + sizes[-1] * sizes[0] * task["batch"]) / task["batch"]
    if rule == "bdfa":  # y′B_l and the agreement gradient of every direct matrix
        extra = 2 * sum(sizes[-1] * a for a, _ in layers[1:])
    return 2.0 * task["batch"] * (2 * every + backward + extra)


def counted_flops(task: dict, rule_name: str, x: torch.Tensor, y: torch.Tensor, loss_fn) -> float:
    """FLOPs of the products in one unstacked ``train_step`` of run 0, counted by torch's
    ``FlopCounterMode`` (for rules whose step chooses how to associate its products — ``sal`` —
    so that the limit counts the products the step needs, not a formula that drifts from it)."""
    from torch.utils.flop_counter import FlopCounterMode

    rule, model, _ = build_runs(task, rule_name, x[:2])[0]
    idx = torch.arange(task["batch"], device=x.device)
    with FlopCounterMode(display=False) as counter:
        rule.train_step(model, x.index_select(0, idx), y.index_select(0, idx), loss_fn)
    return float(counter.get_total_flops())


COUNTED = {"sal"}


def ghost_flops(n: list[int], B: int, rule: str, options: dict) -> float:
    """2 × the multiply-adds of one ghost-unit step (a batch of ``B``) in the fast solver's products.

    Every Euler step: the drives ``[b_{h+1} | Vf_h r_h] = r_h [W_h; Vf_h]ᵀ`` and the errors
    ``e_h = [r_{h+1} | ρ(g_h)] [Wb_h, −Vb_h]ᵀ``: ``2 B n_h (n_{h+1} + k_h)`` per hidden layer
    (``k_h`` ghost units: ``n_{h+1}`` for MA, ``ghost_units`` for MB). Plasticity: MA's free phase
    ``ΔVf_h``, ``ΔVb_h`` (``2 B k_h n_h``); MA's weakly-clamped phase ``ΔW_h`` (``B n_{h+1} n_h``,
    h ≥ 1) and ``W_0``'s change reaching the batch through the Gram matrix (``B² n_1``); MB's free
    phase ``ΔVb_h`` (``B n_h k_h``). Once per step: ``r_0 W_0ᵀ`` (``B n_0 n_1``), the feedforward
    output (``B Σ n_l n_{l+1}``); MA: ``G = r_0 r_0ᵀ`` (``B² n_0``) and ``W_0``'s update
    (``B n_0 n_1``); MB: eq 16's error and update from the final state."""
    L = len(n) - 1
    mb = rule == "ghost-mb"
    k = [0] + [int(options.get("ghost_units", 5)) if mb else n[h + 1] for h in range(1, L)]
    euler = sum(2 * B * n[h] * (n[h + 1] + k[h]) for h in range(1, L))
    ff = B * sum(a * b for a, b in itertools.pairwise(n))
    free, clamped = int(options["free_steps"]), int(options["clamped_steps"])
    once = B * n[0] * n[1] + ff
    if mb:
        free_extra, clamped_extra = sum(B * n[h] * k[h] for h in range(1, L)), 0
        once += sum(B * n[h] * (n[h + 1] + k[h]) for h in range(1, L)) + ff
    else:
        free_extra = sum(2 * B * k[h] * n[h] for h in range(1, L))
        clamped_extra = sum(B * n[h + 1] * n[h] for h in range(1, L)) + B * B * n[1]
        once += B * B * n[0] + B * n[0] * n[1]
    return 2.0 * (free * (euler + free_extra) + clamped * (euler + clamped_extra) + once)


def gemm_rate(reps: int = 20) -> float:
    """The machine's one-thread GEMM rate in this process: FLOP/s of a 1024×784 by 784×512 ``torch.mm``."""
    a, w = torch.rand(1024, 784), torch.rand(512, 784)
    torch.mm(a, w.t())
    best = float("inf")
    for _ in range(reps):
        start = time.thread_time()
        torch.mm(a, w.t())
        best = min(best, time.thread_time() - start)
    return 2.0 * 1024 * 784 * 512 / max(best, 1e-9)


def _clock(device: torch.device):
    """(wall, cpu, minor page faults) now; on a GPU after synchronising, and the "cpu" figure is
    wall-clock too."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        now = time.perf_counter()
        return now, now, _faults()
    return time.perf_counter(), time.thread_time(), _faults()


def _faults() -> int:
    """Minor page faults of this thread so far (of the process where threads are not counted apart)."""
    who = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)
    return resource.getrusage(who).ru_minflt


def run_task(key: str, task: dict, steps: int, reps: int, x, y, source: str) -> dict:
    loss_fn = bp.get_loss(task["loss"])
    device = x.device
    bs = task["batch"]
    n = x.shape[0]
    orders = epoch_orders(list(range(R)), 0, n, device)
    batches = [orders[:, i * bs:(i + 1) * bs] for i in range(steps)]
    rows = {}
    limit_rate = gemm_rate() if device.type == "cpu" else float("nan")
    for rule_name in task["rules"]:
        if device.type == "cpu":  # the best rate seen: a burst of load during one measurement lowers it
            limit_rate = max(limit_rate, gemm_rate())
        seq_runs = build_runs(task, rule_name, x[:2])
        stack_runs = build_runs(task, rule_name, x[:2])
        stack = stack_from([m for _, m, _ in stack_runs], [r for r, _, _ in stack_runs],
                           [o for _, _, o in stack_runs], loss_fn)

        def sequential(batches=batches, runs=seq_runs):
            start, cpu, faults = _clock(device)
            for r, (rule, model, opt) in enumerate(runs):
                for idx in batches:
                    i = idx[r]
                    rule.train_step(model, x.index_select(0, i), y.index_select(0, i), loss_fn)
                    opt.step()
                    rule.after_step(model)
            end, cpu_end, faults_end = _clock(device)
            return end - start, cpu_end - cpu, faults_end - faults

        def stacked(batches=batches, stack=stack):
            start, cpu, faults = _clock(device)
            for idx in batches:
                xb, yb = gather(x, y, idx)
                stack.step(xb, yb)
            end, cpu_end, faults_end = _clock(device)
            return end - start, cpu_end - cpu, faults_end - faults

        for fn in (sequential, stacked):  # warm-up
            fn(batches[: max(2, len(batches) // 10)])
        wall = {"sequential": [], "stacked": []}
        cpu = {"sequential": [], "stacked": []}
        faults = {"sequential": [], "stacked": []}
        for rep in range(reps):
            for name, fn in (("sequential", sequential), ("stacked", stacked)):
                w, c, f = fn()
                wall[name].append(w)
                cpu[name].append(c)
                faults[name].append(f)
            print(f"  {key} {rule_name} rep {rep + 1}/{reps}: sequential {cpu['sequential'][-1]:.2f}s CPU, "
                  f"stacked {cpu['stacked'][-1]:.2f}s CPU", flush=True)
        run_steps = R * len(batches)
        rate = {k: run_steps / statistics.median(v) for k, v in cpu.items()}
        wall_rate = {k: run_steps / statistics.median(v) for k, v in wall.items()}
        if device.type == "cpu":
            limit_rate = max(limit_rate, gemm_rate())
        flops = (counted_flops(task, rule_name, x, y, loss_fn) if rule_name in COUNTED
                 else flops_per_run_step(task, rule_name))
        limit = limit_rate / flops
        speedup = rate["stacked"] / rate["sequential"]
        rows[rule_name] = {
            "run_steps_per_s_cpu": rate, "run_steps_per_s_wall": wall_rate,
            "speedup_cpu": speedup, "speedup_wall": wall_rate["stacked"] / wall_rate["sequential"],
            "cpu_s": cpu, "wall_s": wall, "flop_limit_run_steps_per_s": limit,
            "page_faults_per_run_step": {k: statistics.median(v) / run_steps for k, v in faults.items()},
            "stacked_fraction_of_limit": rate["stacked"] / limit,
            "target": task["target"], "ok": speedup >= task["target"],
            "bytes_one_run": run_bytes(stack_runs[0][0], stack_runs[0][1]),
            "bytes_stack": stack_bytes(stack),
            "stretch": task.get("stretch"),
        }
    return {"task": key, "title": task["title"], "data": source, "steps_per_run": len(batches),
            "gemm_flops_per_s": limit_rate, "rules": rows}


def merge_rounds(rounds: list[dict]) -> dict:
    """One task's rounds as one result: every rule's speeds and ratios the medians over the rounds
    (the ratio the median of the rounds' ratios, not the ratio of the medians), each round's
    ratios kept in ``speedup_cpu_rounds``; the GEMM rate the best seen."""
    if len(rounds) == 1:
        return rounds[0]
    merged = dict(rounds[0])
    merged["gemm_flops_per_s"] = max(r["gemm_flops_per_s"] for r in rounds)
    merged["rules"] = {}
    for rule, first in rounds[0]["rules"].items():
        rows = [r["rules"][rule] for r in rounds]
        med = statistics.median
        row = dict(first)
        for key in ("run_steps_per_s_cpu", "run_steps_per_s_wall", "page_faults_per_run_step"):
            row[key] = {side: med(r[key][side] for r in rows) for side in first[key]}
        row["cpu_s"] = {side: [t for r in rows for t in r["cpu_s"][side]] for side in first["cpu_s"]}
        row["wall_s"] = {side: [t for r in rows for t in r["wall_s"][side]] for side in first["wall_s"]}
        row["speedup_cpu_rounds"] = [r["speedup_cpu"] for r in rows]
        row["speedup_cpu"] = med(row["speedup_cpu_rounds"])
        row["speedup_wall"] = med(r["speedup_wall"] for r in rows)
        row["flop_limit_run_steps_per_s"] = max(r["flop_limit_run_steps_per_s"] for r in rows)
        row["stacked_fraction_of_limit"] = row["run_steps_per_s_cpu"]["stacked"] / row["flop_limit_run_steps_per_s"]
        row["ok"] = row["speedup_cpu"] >= row["target"]
        merged["rules"][rule] = row
    return merged


def _faults_cell(row: dict) -> str:
    faults = row.get("page_faults_per_run_step")
    return "–" if faults is None else f"{faults['sequential']:.1f}, {faults['stacked']:.1f}"


def markdown(result: dict) -> str:
    lines = ["# Stacked runs: 8 runs as one model vs the same 8 runs one after another", "",
             f"Command: `{result['command']}` at commit {result.get('commit')}  ", (f"Machine: {result['machine']}, torch {result['torch']}, "
             f"1 thread, round-robin, {result['reps']} repetitions, medians"
             + (f"; {result['rounds']} rounds (every task measured, then all again), the speed-up the median of "
                "the rounds' speed-ups, each round's in the last column" if result.get("rounds", 1) > 1 else "")
             + "; glibc keeps freed blocks "
             f"(`keep_freed_memory`): {'yes' if result.get('malloc_kept') else 'no'}.  "),
             ("Speed: run-steps per second of this thread's CPU time (`time.thread_time`); the machine is "
              "shared with other processes, so CPU time is the figure that does not count waiting for a core "
              "(wall-clock speed-ups beside it).  " if result.get("device", "cpu") == "cpu" else
              "Speed: run-steps per second of wall-clock time after `torch.cuda.synchronize()` (both columns).  "),
             (f"Load average (1, 5, 15 min) before: {result['load_average']['before']}, after: "
             f"{result['load_average']['after']}.  "),
             ("FLOP limit: the run-step's floating-point operations (forward and weight gradient of every layer, "
             "the error at every layer's input but the first's; NP's noisy pass and regression; for SAL the "
             "products of one unstacked step as counted by `torch.utils.flop_counter`; the ghost rules: the "
             "Euler loop's products × its steps, `ghost_flops`) at the best "
             "rate a 1024×784 by 784×512 `torch.mm` reaches on this thread in the same run (measured before "
             "and after every rule's timing; the best is kept).  "),
             ("Ceiling: FLOP limit ÷ sequential run-steps/s, the speed-up over the sequential runs of an "
             "implementation that wasted nothing (every product at the large-`mm` rate, no other work); "
             "\"stacked / limit needed\" is the fraction of the limit the stacked step must reach for the "
             "target (target ÷ ceiling). Where the sequential runs already reach most of the limit (large "
             "products: the BFA and SAL nets), the ceiling is low and a target near it cannot be met "
             "by stacking on one CPU thread; stacking pays where steps are mostly dispatch (the NP Fig. 2 net, "
             "batch 1, and on a GPU)."), ""]
    for task in result["tasks"]:
        run_by = (f" Measured by `{task['command']}`{' at commit ' + task['commit'] if task.get('commit') else ''} "
                  f"on {task['date']}, load average {task['load_average']}."
                  if task.get("command") and task.get("command") != result["command"] else "")
        lines += [f"## {task['title']}", "",
                  (f"{task['steps_per_run']} steps per run and repetition; data: {task['data']}; "
                  f"measured GEMM rate {task['gemm_flops_per_s'] / 1e9:.1f} GFLOP/s.{run_by}"), "",
                  ("| rule | sequential run-steps/s | stacked run-steps/s | speed-up (CPU) | speed-up (wall) | "
                  "FLOP limit run-steps/s | stacked / limit | ceiling | target | stacked / limit needed | ok | "
                  "stack state / one run's | page faults / run-step (seq., stacked) | speed-up per round |"),
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---:|---:|---|"]
        for rule, row in task["rules"].items():
            target = f"≥ {row['target']:.1f}×" + (f" (stretch {row['stretch']:.0f}×)" if row["stretch"] else "")
            ceiling = row["flop_limit_run_steps_per_s"] / row["run_steps_per_s_cpu"]["sequential"]
            cells = (f"{ceiling:.2f}× | {target} | {row['target'] / ceiling:.2f}"
                     if not math.isnan(ceiling) else f"– | {target} | –")  # NaN on a GPU (no FLOP limit)
            lines.append(f"| {rule} | {row['run_steps_per_s_cpu']['sequential']:.0f} | "
                         f"{row['run_steps_per_s_cpu']['stacked']:.0f} | {row['speedup_cpu']:.2f}× | "
                         f"{row['speedup_wall']:.2f}× | {row['flop_limit_run_steps_per_s']:.0f} | "
                         f"{row['stacked_fraction_of_limit']:.2f} | {cells} | "
                         f"{'yes' if row['ok'] else '**no**'} | "
                         f"{row['bytes_stack'] / max(row['bytes_one_run'], 1):.2f} | {_faults_cell(row)} | "
                         f"{' / '.join(f'{v:.2f}' for v in row.get('speedup_cpu_rounds', [row['speedup_cpu']]))} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 steps, 2 repetitions")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every task this many times over (all tasks, then again): the speed-up "
                             "reported is the median of the rounds' speed-ups, each round's beside it")
    parser.add_argument("--steps", type=int, default=None, help="steps per run and repetition (default per task)")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda: the GPU check")
    parser.add_argument("--merge", action="store_true",
                        help="replace only the tasks run now in the existing results file (each task keeps "
                             "the command, load and date of the run that measured it)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    malloc_kept = keep_freed_memory()  # as the CLI does, for both sides
    reps = 2 if args.quick else args.reps
    default_steps = {"np-fig2": 300, "bfa-400": 60, "sal-3x200": 30, "ghost-500-b100": 10, "ghost-500-b1": 300}
    x, y, source = load_mnist(60000)
    device = torch.device(args.device)
    x, y = x.to(device), y.to(device)
    result = {"torch": torch.__version__, "reps": reps, "runs": R, "device": str(device),
              "machine": (f"{platform.machine()} {os.cpu_count()} CPUs" if device.type == "cpu"
                    else torch.cuda.get_device_name(device)), "python": sys.version.split()[0],
              "tasks": [], "commit": git_commit(), "malloc_kept": malloc_kept}  # read before anything is written
    load_before = os.getloadavg()
    keys = args.tasks.split(",")
    rounds = {key: [] for key in keys}
    for _ in range(max(1, args.rounds)):
        for key in keys:
            steps = 20 if args.quick else (args.steps or default_steps[key])
            rounds[key].append(run_task(key, TASKS[key], steps, reps, x, y, source))
    result["tasks"] = [merge_rounds(rounds[key]) for key in keys]
    result["rounds"] = max(1, args.rounds)
    result["load_average"] = {"before": load_before, "after": os.getloadavg()}
    result["command"] = "python benchmarks/bench_stacked.py" + (" " + " ".join(argv or sys.argv[1:])).rstrip()
    for task in result["tasks"]:
        task.update(command=result["command"], load_average=result["load_average"], commit=result["commit"],
                    date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    old = out / f"stacked_speed{suffix}.json"
    if args.merge and old.exists():
        previous = json.loads(old.read_text())
        fresh = {t["task"]: t for t in result["tasks"]}
        keys = [t["task"] for t in previous["tasks"]] + [k for k in fresh if k not in
                                                          {t["task"] for t in previous["tasks"]}]
        merged = {t["task"]: t for t in previous["tasks"]} | fresh
        previous["tasks"] = [merged[k] for k in keys]
        result = previous
    write_results(out, f"stacked_speed{suffix}", result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
