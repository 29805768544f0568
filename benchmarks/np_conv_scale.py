"""Why DFA's conv taps need scaling: update norms of DFA vs BP per layer of two CIFAR-10 CNNs at init.

For LeNet-5 (the ``fb-lenet-cifar10`` preset's model) and the NP paper's CNN (``npcnn``, Crafton
et al. 2019) on CIFAR-10 batches, this compares ‖ΔW‖ of each layer under ``dfa`` with its conv
taps' random feedback left as drawn (``conv_scale="none"``: U(±1/√n_l), the behaviour before
the option existed), divided by √P (``"sqrt_positions"``, the default of ``dfa`` and ``np-dfa``)
or by P (``"positions"``), P the spatial positions of the tap's input, against BP's ‖ΔW‖,
averaged over ``--batches`` batches of 128. Row ``l`` is the weight whose update comes from the
tap at the *next* layer's input: only weights feeding a convolution are affected.

    BIOPLAUSIBLE_DATA=/work/shared/datasets python benchmarks/np_conv_scale.py

Writes ``benchmarks/results/np_conv_scale.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

import bioplausible as bp

RESULTS = Path(__file__).resolve().parent / "results"
SCALES = ("none", "sqrt_positions", "positions")
MODELS = ("lenet", "npcnn")


def norms(model_name: str, rule_name: str, opts: dict, x, y, batches: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = bp.build_model(model_name, input_shape=tuple(x.shape[1:]), num_classes=10)
    rule = bp.make(rule_name, **opts)
    model = rule.prepare(model, example=x[:2])
    model.eval()  # no dropout: the same network for every rule
    loss = bp.get_loss("cross_entropy")
    out: dict[str, float] = {}
    for b in range(batches):
        xb, yb = x[b * 128:(b + 1) * 128], y[b * 128:(b + 1) * 128]
        rule.train_step(model, xb, yb, loss)
        for n, p in model.named_parameters():
            if n.endswith("weight") and p.grad is not None:
                out[n] = out.get(n, 0.0) + float(p.grad.norm()) / batches
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = bp.load_dataset("cifar10")
    x, y = data.train.x[:128 * args.batches], data.train.y[:128 * args.batches]
    load = os.getloadavg()
    result: dict[str, dict] = {}
    lines = ["# DFA on CIFAR-10 CNNs: ‖ΔW‖ per layer relative to BP's, at init", "",
             (f"Command: `python benchmarks/np_conv_scale.py --batches {args.batches}`; load average "
             f"{tuple(round(v, 2) for v in load)}. Cross-entropy, batches of 128 of the standardised "
             f"training set, eval mode (no dropout), seed 0; `dfa` with its `conv_scale` option "
             f"(`none` = the draw before the option existed; `sqrt_positions` = the default). The row "
             f"of a weight is driven by the tap at the next layer's input: only weights feeding a "
             f"convolution change with the option."), ""]
    for model_name in MODELS:
        ref = norms(model_name, "bp", {}, x, y, args.batches)
        dfa = {s: norms(model_name, "dfa", {"conv_scale": s}, x, y, args.batches) for s in SCALES}
        rows = {n: {"bp": ref[n], **{f"dfa_{s}": dfa[s].get(n) for s in SCALES}} for n in ref}
        result[model_name] = rows
        lines += [f"## {model_name}", "",
                  "| layer | ‖ΔW‖ BP | DFA none / BP | DFA ÷ √P (default) / BP | DFA ÷ P / BP |",
                  "|---|---:|---:|---:|---:|"]
        for n, r in rows.items():
            ratios = " | ".join(f"{r[f'dfa_{s}'] / r['bp']:.3g}" for s in SCALES)
            lines.append(f"| {n} | {r['bp']:.3g} | {ratios} |")
        lines.append("")
    (RESULTS / "np_conv_scale.json").write_text(json.dumps(
        {"command": f"python benchmarks/np_conv_scale.py --batches {args.batches}", "load_average": load,
         "models": result}, indent=2))
    (RESULTS / "np_conv_scale.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
