"""Epoch time of BFA and BDFA (Luo, Fu & Glass 2017) relative to backprop, in one process.

Task: MNIST 784-400-400-10 tanh MLP (the paper's 2×400), summed sigmoid BCE (``bce_sum``, the
authors' loss scale), batch 128, one epoch = 390 batches of the 50k training images. Every rule
trains its own copy of the same initial model through the contract's loop ``rule.train_step`` +
``opt.step()`` + ``rule.after_step`` with ``rule.build_optimizer(model, {"name": "sgd", "lr":
1e-4})`` (fused SGD; BFA gets one optimizer per learning phase and steps its forward phase
before its generative phase inside ``train_step``). FA and DFA are timed beside them for
reference. The rules take turns (round-robin) for ``--reps`` repetitions on one thread; the
ratio is median(rule) / median(bp). The project's target: BFA and BDFA ≤ 2.0× BP (stretch 1.6×).

    BIOPLAUSIBLE_DATA=/work/shared/datasets python benchmarks/bench_bidirectional.py
    python benchmarks/bench_bidirectional.py --quick      # smoke run: few batches

Without the dataset random tensors of the same shape are used, and the output says so.
Denormals are flushed to zero for every rule alike (as in bench_feedback.py).
Results: ``benchmarks/results/bidirectional_speed.{json,md}`` (``_quick`` suffix for ``--quick``).
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
from _common import round_robin

import bioplausible as bp

RULES = ["bp", "fa", "dfa", "bfa", "bdfa"]
LIMITS = {"bfa": 2.0, "bdfa": 2.0}
STRETCH = 1.6
RESULTS = Path(__file__).resolve().parent / "results"
BATCH, LR, SPEC = 128, 1e-4, "mlp:784-400-400-10"


def load(n: int = 50_000):
    try:
        data = bp.load_dataset("mnist", flatten=True, normalize="unit")
        return data.train.x[:n].contiguous(), data.train.y[:n].long(), "real (first 50k training images)"
    except Exception as exc:  # noqa: BLE001 - any failure falls back to random data, reported
        gen = torch.Generator().manual_seed(0)
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        return torch.rand(n, 784, generator=gen), torch.randint(0, 10, (n,), generator=gen), f"random ({reason})"


def setup(name: str, seed: int = 0):
    torch.manual_seed(seed)
    model = bp.build_model(SPEC, activation="tanh")
    rule = bp.make(name)
    rule.set_seed(seed)
    model = rule.prepare(model)
    opt = rule.build_optimizer(model, {"name": "sgd", "lr": LR})
    return rule, model, opt


def time_epoch(rule, model, opt, loss_fn, x, y, batches) -> float:
    start = time.perf_counter()
    for idx in batches:
        rule.train_step(model, x.index_select(0, idx), y.index_select(0, idx), loss_fn)
        opt.step()
        rule.after_step(model)
    return time.perf_counter() - start


def markdown(result: dict, command: str) -> str:
    lines = ["# Bidirectional FA / DFA: epoch time relative to BP", "",
             f"Command: `{command}`  ", f"Machine: {result['machine']}  ",
             (f"torch {result['torch']}, 1 thread, round-robin, {result['reps']} repetitions, median; "
              f"denormals flushed.  "),
             (f"Load average (1, 5, 15 min) before: {result['load_average']['before']}, after: "
              f"{result['load_average']['after']} (other processes share the machine's cores)."), "",
             (f"{SPEC} tanh, bce_sum, fused SGD lr {LR}, batch {BATCH}, {result['batches']} batches per "
              f"repetition; data: {result['data']}."), "",
             f"| rule | median time (s) | ratio to BP | limit | ok | stretch ({STRETCH}×) |",
             "|---|---:|---:|---:|:---:|:---:|"]
    for r, row in result["rules"].items():
        limit = f"{row['limit']:.2f}" if row["limit"] else "—"
        ok = {True: "yes", False: "**no**", None: "—"}[row["ok"]]
        stretch = "—" if row["limit"] is None else ("yes" if row["ratio"] <= STRETCH else "no")
        lines.append(f"| {r} | {row['median_s']:.3f} | {row['ratio']:.3f} | {limit} | {ok} | {stretch} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 batches, 2 reps")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    reps = 2 if args.quick else args.reps
    x, y, source = load()
    loss_fn = bp.get_loss("bce_sum")
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(1))
    n_batches = 20 if args.quick else x.shape[0] // BATCH
    batches = [order[i * BATCH:(i + 1) * BATCH] for i in range(n_batches)]
    load_before = os.getloadavg()
    setups = {r: setup(r) for r in RULES}
    rows = round_robin(RULES, lambda r, warm: time_epoch(*setups[r], loss_fn, x, y, batches[:5] if warm else batches),
                       reps, limits=LIMITS)
    result = {"machine": f"{platform.machine()}  {os.cpu_count()} CPUs", "torch": torch.__version__,
              "reps": reps, "batches": len(batches), "data": source, "rules": rows,
              "load_average": {"before": load_before, "after": os.getloadavg()}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "bidirectional_speed" + ("_quick" if args.quick else "")
    command = "python benchmarks/bench_bidirectional.py" + (" --quick" if args.quick else "")
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    (out / f"{stem}.md").write_text(markdown(result, command))
    print(markdown(result, command))
    return 0 if all(row["ok"] is not False for row in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
