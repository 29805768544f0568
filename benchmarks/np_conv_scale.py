"""Why DFA's conv taps need scaling: update norms of DFA vs BP per layer of the CIFAR CNN at init.

For the ``npcnn`` model (Crafton et al. 2019) on a CIFAR-10 batch, this compares ‖ΔW‖ of each
layer under DFA with unscaled feedback (the ``dfa`` rule: U(±1/√n_l)), under DFA with the conv
taps' feedback divided by √P or by P, P the number of spatial positions of the tap (``np-dfa``
with a feedback rate of 0, ``conv_scale="sqrt_positions"`` / ``"positions"``), and under BP, averaged over ``--batches`` batches of 128.

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


def norms(name: str, opts: dict, x, y, batches: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = bp.build_model("npcnn")
    model.eval()  # no dropout: the same network for every rule
    rule = bp.make(name, **opts)
    model = rule.prepare(model, example=x[:2])
    model.eval()
    if name == "np-dfa":
        rule.build_optimizer(model, {"name": "sgd", "lr": 1.0, "groups": {"feedback": {"lr": 0.0}}})
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
    ref = norms("bp", {}, x, y, args.batches)
    plain = norms("dfa", {}, x, y, args.batches)
    root = norms("np-dfa", {"c_h": 0.067}, x, y, args.batches)
    scaled = norms("np-dfa", {"c_h": 0.067, "conv_scale": "positions"}, x, y, args.batches)
    rows = {n: {"bp": ref[n], "dfa": plain.get(n), "dfa_sqrt": root.get(n), "dfa_scaled": scaled.get(n)}
            for n in ref}
    about = (f"Command: `python benchmarks/np_conv_scale.py --batches {args.batches}`; load average "
             f"{os.getloadavg()}. npcnn (eval mode, no dropout), cross-entropy, batches of 128.")
    lines = ["# DFA on the CIFAR CNN: ‖ΔW‖ per layer relative to BP's, at init", "", about, "",
             "| layer | ‖ΔW‖ BP | DFA / BP | conv taps ÷ √P / BP | conv taps ÷ P / BP |",
             "|---|---:|---:|---:|---:|"]
    for n, r in rows.items():
        lines.append(f"| {n} | {r['bp']:.3g} | {r['dfa'] / r['bp']:.3g} | {r['dfa_sqrt'] / r['bp']:.3g} | "
                     f"{r['dfa_scaled'] / r['bp']:.3g} |")
    out = RESULTS
    (out / "np_conv_scale.json").write_text(json.dumps(rows, indent=2))
    (out / "np_conv_scale.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
