"""Activation relaxation speed against backprop (Millidge et al. 2022's MNIST network).

784-300-300-100-10 ReLU MLP, batch 64, K = 100, η_x = 0.1, ``mse_sum``, plain SGD, float32,
one thread. Contenders run round-robin in one process over the same pre-gathered batches;
each timed block is the minimal loop ``rule.train_step(model, x, y, loss); opt.step()``. The
literal loop is ~15× slower, so it times fewer batches per block and its per-batch time is
extrapolated to an epoch (reported as such). Medians over repetitions.

    BIOPLAUSIBLE_DATA=../shared/datasets python benchmarks/bench_ar.py [--reps 7]

Writes ``benchmarks/results/ar_speed.json`` and ``ar_speed.md``.

``--graph`` times graph mode instead: LeNet-5 on CIFAR-10 and a small 2-block
ResNet without BatchNorm (:class:`SmallResNet`), batch 64, K = 100, η_x = 0.1, cross-entropy,
float32, one thread; contenders BP, the graph closed form (default solver) and the literal loop
(fewer batches per block, per-batch time) for each ``graph_units`` choice (op, activation, layer),
and the fixed point; plus, per unit choice, the number of units, the longest chain, the
closed form's VJP count and the angle to BP's gradient (float64, first batch). Each timed block restarts from
the initial weights (SGD at lr 1e-3): at K = 100, η_x = 0.1 these deep graphs are far from
converged and several steps in a row blow the weights up. Writes ``ar_graph_speed.*``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import bioplausible as bp
from bioplausible.core.losses import get_loss
from bioplausible.rules.ar.ar_relax import count_backward_products

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


class SmallResNet(nn.Module):
    """Conv3x3-16 stem, two residual blocks (conv-relu-conv + identity, relu), max-pool 2,
    global average pool, linear: a small 2-block ResNet without BatchNorm."""

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in range(4))
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.stem(x))
        for b in range(2):
            h = F.relu(self.convs[2 * b + 1](F.relu(self.convs[2 * b](h))) + h)
        h = F.adaptive_avg_pool2d(F.max_pool2d(h, 2), 1)
        return self.fc(torch.flatten(h, 1))


def load_cifar(n: int, batch: int, seed: int = 0):
    """``n`` batches of CIFAR-10 (real if ``load_dataset`` finds it, else random tensors)."""
    try:
        data = bp.load_dataset("cifar10", download=False)
        x_all, y_all, source = data.train.x, data.train.y, "CIFAR-10 train split (real data)"
    except Exception as exc:  # noqa: BLE001 - any data problem falls back to random tensors
        g = torch.Generator().manual_seed(seed)
        x_all = torch.randn(50000, 3, 32, 32, generator=g)
        y_all = torch.randint(0, 10, (50000,), generator=g)
        source = f"random tensors of CIFAR-10's shape ({type(exc).__name__}: {exc})"
    perm = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(seed))
    return ([(x_all[perm[i * batch:(i + 1) * batch]].contiguous(), y_all[perm[i * batch:(i + 1) * batch]])
             for i in range(n)], source, len(x_all))


UNITS = ("op", "activation", "layer")


def _angle(a: torch.Tensor, b: torch.Tensor) -> float:
    cos = float(torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-300))
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


ANGLE_SETTINGS = ((100, 0.1), (200, 0.1), (100, 0.5))  # (K, η_x): the MLP defaults first


def _counting(calls: list, original):
    def vjp(nd, v, targets):
        calls.append(nd.key)
        return original(nd, v, targets)
    return vjp


def graph_diagnostics(build, x, y, loss) -> dict:
    """Per unit choice: units, longest chain, closed-form VJP count at the default K and η_x,
    and the angle of the AR update to BP's gradient (all parameters, and per weight) at each
    of ``ANGLE_SETTINGS`` (float64, initial weights, one batch)."""
    from bioplausible.rules.ar import ar_graph_closed
    from bioplausible.rules.ar.ar_graph import _run_forward, trace_model

    torch.manual_seed(0)
    model = build().double()
    x = x.double()
    want = bp.make("bp").bp_gradients(model, x, y, loss)
    flat_want = torch.cat([want[n].reshape(-1) for n, _ in model.named_parameters()])
    out = {}
    for units in UNITS:
        nodes, _ = _run_forward(trace_model(model), x, units)
        depth = max(max(s) for s in ar_graph_closed.distances_below(nodes)) + 1
        entry = {"relaxed_units": len(nodes), "longest_chain_units": depth, "angles": {}}
        for steps, eta in ANGLE_SETTINGS:
            rule = bp.make("ar", graph=True, graph_units=units, relax_steps=steps, eta_x=eta)
            calls: list[str] = []
            original = ar_graph_closed._vjp
            ar_graph_closed._vjp = _counting(calls, original)
            try:
                rule.train_step(model, x, y, loss)
            finally:
                ar_graph_closed._vjp = original
            if (steps, eta) == ANGLE_SETTINGS[0]:
                entry["closed_form_vjps"] = len(calls)
                entry["closed_form_vjps_by_unit"] = {k: calls.count(k) for k in dict.fromkeys(calls)}
            got = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
            entry["angles"][f"K={steps},eta={eta}"] = {
                "all": _angle(got, flat_want),
                **{n: _angle(p.grad.reshape(-1), want[n].reshape(-1))
                   for n, p in model.named_parameters() if n.endswith("weight")}}
        out[units] = entry
    return out


def graph_main(args) -> None:
    """Graph-mode rows: BP vs the closed form and the loop per unit choice, and the fixed point."""
    from bioplausible.models import LeNet5

    batch, steps, eta = 64, 100, 0.1
    batches, source, _ = load_cifar(args.batches, batch)
    loss = get_loss("cross_entropy")
    builders = {"lenet5_cifar10": lambda: LeNet5(input_shape=(3, 32, 32)),
                "resnet2_nobn_cifar10": SmallResNet}
    options = {"bp": ("bp", {})}
    for units in UNITS:
        base = {"graph": True, "relax_steps": steps, "eta_x": eta, "graph_units": units}
        options[f"ar_graph_closed_form_{units}"] = ("ar", base)
        options[f"ar_graph_loop_{units}"] = ("ar", {**base, "solver": "loop"})
    options["ar_graph_fixed_point"] = ("ar", {"graph": True, "solver": "fixed_point"})
    result = {"batch_size": batch, "relax_steps": steps, "eta_x": eta, "loss": "cross_entropy",
              "sweep": "gauss_seidel", "dtype": "float32", "threads": args.threads, "reps": args.reps,
              "data": source, "torch": torch.__version__,
              "machine": platform.processor() or platform.machine(),
              "load_average": list(os.getloadavg()), "models": {}}
    lines = ["# Activation relaxation in graph mode vs BP: time per training step", "",
             (f"Batch {batch}, K = {steps}, η_x = {eta}, cross_entropy, Gauss-Seidel sweep, SGD, "
              f"float32, {args.threads} thread(s), torch {torch.__version__}. Data: {source}. Median "
              f"of {args.reps} round-robin repetitions in one process; BP, closed forms and fixed "
              f"point time {args.batches} batches per block, the loops {args.loop_batches}. "
              "Units (`graph_units`): `op` every fx node; `activation` each elementwise "
              "activation merged into the producer it alone reads; `layer` (the default) also "
              "pooling, flatten, add joins and BatchNorm. Angles: float64, first batch, initial weights, all "
              "parameters (per weight in the JSON). Load average at the start: "
              f"{', '.join(f'{v:.1f}' for v in result['load_average'])}."), ""]
    for model_name, build in builders.items():
        diag = graph_diagnostics(build, *batches[0], loss)
        runs = {}
        for key, (rule_name, opts) in options.items():
            torch.manual_seed(0)
            model = build()
            rule = bp.make(rule_name, **opts)
            model = rule.prepare(model)
            runs[key] = (rule, model, torch.optim.SGD(rule.param_groups(model, lr=1e-3)))
        # at K = 100, η_x = 0.1 deep op graphs are far from converged and their AR updates
        # blow the weights up within a few SGD steps; every block therefore restarts from the
        # initial weights (outside the timed region), so all contenders time the same steps
        initial = {k: {n: t.clone() for n, t in m.state_dict().items()} for k, (_, m, _) in runs.items()}
        blocks = {k: (batches[: args.loop_batches] if "_loop_" in k else batches) for k in runs}
        times: dict[str, list[float]] = {k: [] for k in runs}
        for rep in range(args.reps + 1):  # the first round is a warm-up
            for k, (rule, model, opt) in runs.items():
                model.load_state_dict(initial[k])
                t = time_block(rule, model, opt, blocks[k][:2] if rep == 0 else blocks[k], loss)
                if rep:
                    times[k].append(t)
        per_batch = {k: statistics.median(v) for k, v in times.items()}
        result["models"][model_name] = {
            "units": diag,
            "per_batch_ms": {k: v * 1e3 for k, v in per_batch.items()},
            "ratio_to_bp": {k: v / per_batch["bp"] for k, v in per_batch.items()},
            "loop_over_closed_form": {u: per_batch[f"ar_graph_loop_{u}"]
                                      / per_batch[f"ar_graph_closed_form_{u}"] for u in UNITS},
            "all_times_ms": {k: [t * 1e3 for t in v] for k, v in times.items()},
        }
        r = result["models"][model_name]
        settings = [f"K={k},eta={e}" for k, e in ANGLE_SETTINGS]
        lines += [f"## {model_name}", "",
                  "| units | relaxed units | longest chain | closed-form VJPs | "
                  + " | ".join(f"angle to BP, K = {k}, η_x = {e} (°)" for k, e in ANGLE_SETTINGS) + " |",
                  "|---|---|---|---|" + "---|" * len(settings)]
        lines += [f"| {u} | {d['relaxed_units']} | {d['longest_chain_units']} | "
                  f"{d['closed_form_vjps']} | " + " | ".join(f"{d['angles'][s]['all']:.4f}" for s in settings)
                  + " |" for u, d in diag.items()]
        lines += ["", "| contender | ms / batch | × BP |", "|---|---|---|"]
        lines += [f"| {k} | {r['per_batch_ms'][k]:.1f} | {r['ratio_to_bp'][k]:.2f} |" for k in runs]
        lines += ["", "Loop / closed form: " + ", ".join(
            f"{u} {v:.1f}×" for u, v in r["loop_over_closed_form"].items()) + ".", ""]
    command = ("Command: `BIOPLAUSIBLE_DATA=../shared/datasets OMP_NUM_THREADS=1 python "
               f"benchmarks/bench_ar.py --graph --reps {args.reps} --batches {args.batches} "
               f"--loop-batches {args.loop_batches}`")
    lines += [command, ""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ar_graph_speed.json").write_text(json.dumps(result, indent=1))
    (args.out / "ar_graph_speed.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--batches", type=int, default=200, help="batches per timed block (BP, closed form)")
    ap.add_argument("--loop-batches", type=int, default=20, help="batches per timed block (loop)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--graph", action="store_true", help="time graph mode (LeNet-5, small ResNet)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.graph:
        graph_main(args)
        return
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
