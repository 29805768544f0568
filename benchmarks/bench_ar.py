"""Activation relaxation speed against backprop (issue 4's acceptance benchmark).

784-300-300-100-10 ReLU MLP, batch 64, K = 100, η_x = 0.1, ``mse_sum``, plain SGD, float32,
one thread. Contenders run round-robin in one process over the same pre-gathered batches;
each timed block is the minimal loop ``rule.train_step(model, x, y, loss); opt.step()``. The
literal loop is ~15× slower, so it times fewer batches per block and its per-batch time is
extrapolated to an epoch (reported as such). Medians over repetitions.

    BIOPLAUSIBLE_DATA=../shared/datasets python benchmarks/bench_ar.py [--reps 7]

Writes ``benchmarks/results/ar_speed.json`` and ``ar_speed.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import bioplausible as bp
from bioplausible.losses import get_loss
from bioplausible.rules.ar_relax import count_backward_products

SPEC = "mlp:784-300-300-100-10,activation=relu,init=normal:0.05"
RESULTS = Path(__file__).resolve().parent / "results"


def load_batches(n: int, batch: int, seed: int = 0):
    """``n`` batches of MNIST (real if ``load_dataset`` finds it, else random tensors)."""
    try:
        data = bp.load_dataset("mnist", normalize="unit", flatten=True, download=False)
        x_all, y_all, source = data.train.x, data.train.y, "MNIST train split (real data)"
    except Exception as exc:  # noqa: BLE001 - any data problem falls back to random tensors
        g = torch.Generator().manual_seed(seed)
        x_all = torch.rand(60000, 784, generator=g)
        y_all = torch.randint(0, 10, (60000,), generator=g)
        source = f"random tensors of MNIST's shape ({type(exc).__name__}: {exc})"
    perm = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(seed))
    batches = [(x_all[perm[i * batch:(i + 1) * batch]].contiguous(), y_all[perm[i * batch:(i + 1) * batch]])
               for i in range(n)]
    return batches, source, len(x_all)


def contender(rule_name: str, **options):
    torch.manual_seed(0)
    model = bp.build_model(SPEC)
    rule = bp.make(rule_name, **options)
    model = rule.prepare(model)
    opt = torch.optim.SGD(rule.param_groups(model, lr=5e-4))
    return rule, model, opt


def time_block(rule, model, opt, batches, loss) -> float:
    t0 = time.perf_counter()
    for x, y in batches:
        rule.train_step(model, x, y, loss)
        opt.step()
    return (time.perf_counter() - t0) / len(batches)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--batches", type=int, default=200, help="batches per timed block (BP, closed form)")
    ap.add_argument("--loop-batches", type=int, default=20, help="batches per timed block (loop)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    batch, steps, eta = 64, 100, 0.1
    batches, source, n_train = load_batches(args.batches, batch)
    loss = get_loss("mse_sum")
    runs = {
        "bp": contender("bp"),
        "ar_closed_form": contender("ar", relax_steps=steps, eta_x=eta, solver="closed_form"),
        "ar_loop": contender("ar", relax_steps=steps, eta_x=eta, solver="loop"),
        "ar_fixed_point": contender("ar", solver="fixed_point"),
    }
    blocks = {k: (batches[: args.loop_batches] if k == "ar_loop" else batches) for k in runs}
    for k, (rule, model, opt) in runs.items():  # warm-up
        time_block(rule, model, opt, blocks[k][:5], loss)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.reps):
        for k, (rule, model, opt) in runs.items():
            times[k].append(time_block(rule, model, opt, blocks[k], loss))
    per_batch = {k: statistics.median(v) for k, v in times.items()}
    epoch_batches = -(-n_train // batch)
    result = {
        "model": SPEC, "batch_size": batch, "relax_steps": steps, "eta_x": eta, "loss": "mse_sum",
        "dtype": "float32", "threads": args.threads, "reps": args.reps, "data": source,
        "batches_per_block": {k: len(v) for k, v in blocks.items()},
        "loop_extrapolated": True,
        "backward_products": dict(zip(("closed_form", "loop_per_step"), count_backward_products(4))),
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "per_batch_ms": {k: v * 1e3 for k, v in per_batch.items()},
        "epoch_s": {k: v * epoch_batches for k, v in per_batch.items()},
        "ratio_to_bp": {k: v / per_batch["bp"] for k, v in per_batch.items()},
        "all_times_ms": {k: [t * 1e3 for t in v] for k, v in times.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ar_speed.json").write_text(json.dumps(result, indent=1))
    lines = [
        "# Activation relaxation vs BP: time per training step",
        "",
        (f"784-300-300-100-10 ReLU, batch {batch}, K = {steps}, η_x = {eta}, mse_sum, SGD, float32, "
        f"{args.threads} thread(s), torch {torch.__version__}. Data: {source}. Median of "
        f"{args.reps} round-robin repetitions in one process; epoch = {epoch_batches} batches "
        f"(extrapolated from the per-batch time; the loop times {args.loop_batches} batches per block)."),
        "",
        "| contender | ms / batch | s / epoch | × BP |",
        "|---|---|---|---|",
    ]
    for k in runs:
        lines.append(f"| {k} | {result['per_batch_ms'][k]:.3f} | {result['epoch_s'][k]:.2f} | "
                     f"{result['ratio_to_bp'][k]:.2f} |")
    lines += ["", "Command: `BIOPLAUSIBLE_DATA=../shared/datasets python benchmarks/bench_ar.py`", ""]
    (args.out / "ar_speed.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
