"""Epoch time of the ghost-unit rules (MA, MB) on MNIST 784-500-10, fast vs literal vs BP, one thread.

* MA: batch 100, 200 free + 200 weakly-clamped Euler steps per batch (Table 2);
* MB: batch 1, 100 free + 40 weakly-clamped steps per example (Table 4), numba kernel;
* BP at the same batch size (sigmoid MLP, summed MSE, SGD) as the reference.

Every timed loop is the minimal one (``rule.train_step`` [+ ``opt.step()`` for BP]) over the
first ``--fraction`` of the 55 000 training examples; an epoch time is that time / fraction
(``--fraction 1`` times the whole epoch). The literal paths (Algorithms 1-2 step by step, the
oracles) are timed on ``--literal-batches`` batches and their per-sample cost extrapolated.
Rules take turns (round-robin) for ``--reps`` repetitions; medians are reported. Denormals are
flushed for every rule alike (saturated sigmoids).

    BIOPLAUSIBLE_DATA=/work/shared/datasets OMP_NUM_THREADS=1 python benchmarks/bench_ghost.py
    python benchmarks/bench_ghost.py --fraction 0.1 --reps 1     # a tenth of an epoch each

Results: ``benchmarks/results/ghost_speed.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import bioplausible as bp

RESULTS = Path(__file__).resolve().parent / "results"
N_TRAIN = 55_000
LIMITS = {"ghost-ma": 90.0, "ghost-mb": 120.0}


def model(gamma: float, seed: int = 0) -> torch.nn.Module:
    """Tables 2 and 4: U[−γ, γ] init, no biases (γ = 0.2 for MA, 0.05 for MB)."""
    torch.manual_seed(seed)
    return bp.MLP([784, 500, 10], activation="sigmoid", output_activation="sigmoid", bias=False,
                  init=f"uniform:{gamma}")


def time_rule(name: str, opts: dict, x: torch.Tensor, y: torch.Tensor, batch: int,
              n_batches: int) -> tuple[float, float]:
    """Wall-clock and process CPU seconds for ``n_batches`` steps (after one untimed warm-up step).

    On a shared, oversubscribed machine the CPU time (time.process_time, one thread) is the
    better estimate of what the loop costs on an idle core; both are reported.
    """
    loss = bp.get_loss("mse_sum")
    rule = bp.make(name, **opts)
    rule.set_seed(0)
    m = rule.prepare(model(0.2 if batch > 1 else 0.05))
    opt = None if rule.updates_forward else torch.optim.SGD(m.parameters(), lr=0.01)
    rule.train_step(m, x[:batch], y[:batch], loss)
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(n_batches):
        xb, yb = x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch]
        rule.train_step(m, xb, yb, loss)
        if opt is not None:
            opt.step()
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fraction", type=float, default=1.0)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--literal-batches", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "ghost_speed"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    try:
        data = bp.load_dataset("mnist", flatten=True, normalize="unit")
        x, y, source = data.train.x[:N_TRAIN].contiguous(), data.train.y[:N_TRAIN].long(), "real"
    except Exception as exc:  # noqa: BLE001 - fall back to random tensors, reported
        g = torch.Generator().manual_seed(0)
        x, y = torch.rand(N_TRAIN, 784, generator=g), torch.randint(0, 10, (N_TRAIN,), generator=g)
        source = f"random ({type(exc).__name__})"
    tasks = {  # label: (rule, options, batch)
        "ghost-ma": ("ghost-ma", {}, 100),
        "bp (batch 100)": ("bp", {}, 100),
        "ghost-mb": ("ghost-mb", {}, 1),
        "bp (batch 1)": ("bp", {}, 1),
    }
    literal = {"ghost-ma": ("ghost-ma", {"solver": "literal"}, 100),
               "ghost-mb": ("ghost-mb", {"solver": "literal"}, 1)}
    times: dict[str, list[float]] = {k: [] for k in tasks}
    cpu_times: dict[str, list[float]] = {k: [] for k in tasks}
    lit_times: dict[str, list[float]] = {k: [] for k in literal}
    for _ in range(args.reps):
        for label, (name, opts, batch) in tasks.items():
            n = max(1, round(args.fraction * N_TRAIN / batch))
            wall, cpu = time_rule(name, opts, x, y, batch, n)
            times[label].append(wall * (N_TRAIN / batch) / n)
            cpu_times[label].append(cpu * (N_TRAIN / batch) / n)
            print(f"{label}: {times[label][-1]:.1f} s/epoch wall, {cpu_times[label][-1]:.1f} s CPU "
                  f"(from {n} batches)", flush=True)
        for label, (name, opts, batch) in literal.items():
            n = args.literal_batches * (50 if batch == 1 else 1)
            lit_times[label].append(time_rule(name, opts, x, y, batch, n)[1] * (N_TRAIN / batch) / n)
            print(f"{label} literal: {lit_times[label][-1]:.0f} s/epoch CPU (from {n} batches)", flush=True)
    med = {k: statistics.median(v) for k, v in cpu_times.items()}
    wall_med = {k: statistics.median(v) for k, v in times.items()}
    lit = {k: statistics.median(v) for k, v in lit_times.items()}
    rows = []
    for label in ("ghost-ma", "ghost-mb"):
        bp_label = "bp (batch 100)" if label == "ghost-ma" else "bp (batch 1)"
        rows.append({"rule": label, "epoch_s": med[label], "wall_epoch_s": wall_med[label],
                     "limit_s": LIMITS[label],
                     "within_limit": med[label] <= LIMITS[label], "bp_epoch_s": med[bp_label],
                     "ratio_to_bp": med[label] / med[bp_label], "literal_epoch_s": lit[label],
                     "speedup_over_literal": lit[label] / med[label]})
    info = {"data": source, "fraction": args.fraction, "reps": args.reps, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "numba": _numba_version(),
            "cpu": platform.processor() or platform.machine(),
            "load_average": os.getloadavg(), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"info": info, "rows": rows, "all_wall": times,
                                                    "all_cpu": cpu_times,
                                                    "literal": lit_times}, indent=2) + "\n")
    lines = ["# Ghost units: epoch time on MNIST 784-500-10 (one thread)", "",
             (f"Measured {info['date_utc']} UTC, {source} data, {args.fraction:g} of an epoch per timing "
              f"(epoch = time / fraction), {args.reps} rep(s), load average {info['load_average'][0]:.1f} "
              "(a shared machine: absolute times are inflated accordingly)."), "",
             "Times are process CPU seconds per epoch (one thread); wall-clock in brackets.", "",
             ("| rule | s/epoch (wall) | limit | BP s/epoch (same batch) | × BP | literal s/epoch | "
              "fast vs literal |"),
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['rule']} | {r['epoch_s']:.1f} ({r['wall_epoch_s']:.0f}) | {r['limit_s']:.0f} | "
                     f"{r['bp_epoch_s']:.1f} | "
                     f"{r['ratio_to_bp']:.1f} | {r['literal_epoch_s']:.0f} | "
                     f"{r['speedup_over_literal']:.1f}× |")
    lines += ["", ("Command: `BIOPLAUSIBLE_DATA=... OMP_NUM_THREADS=1 python benchmarks/bench_ghost.py "
                   f"--fraction {args.fraction:g} --reps {args.reps}`"), ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


def _numba_version() -> str | None:
    try:
        import numba

        return numba.__version__
    except ImportError:
        return None


if __name__ == "__main__":
    main()
