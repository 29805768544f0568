"""Train several seeds of each rule as one stacked model, and check it gives the numbers of
separate runs: ``bp.compare(..., stack=True)`` on your own model factory.

    python examples/stacked_seeds.py           # MNIST 784-50-20-10 sigmoid, 1 epoch, seeds 0-4
    python examples/stacked_seeds.py --tiny    # random data, seconds (what the tests run)

Each rule's seeds become one model whose weights carry a leading run dimension; the run folders,
metrics and summaries are those of the separate runs. The command line does the same with
``bioplausible compare --rules bp,fa,np --seeds 0,1,2,3,4 --stack``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

import bioplausible as bp

TINY = "--tiny" in sys.argv or os.environ.get("BIOPLAUSIBLE_EXAMPLE_TINY") == "1"
RULES = ["bp", "fa", "np"]
SEEDS = [0, 1, 2] if TINY else [0, 1, 2, 3, 4]


def data():
    if TINY:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(320, 20, generator=g, dtype=torch.float64)
        y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
        return bp.as_bundle((x[:256], y[:256]), (x[256:], y[256:])), (20, 16, 4)
    return bp.load_dataset("mnist", flatten=True), (784, 50, 20, 10)


def main() -> None:
    bundle, sizes = data()

    def factory():  # your own model: Linear layers, each followed by an activation or nothing
        layers = []
        for a, b in zip(sizes, sizes[1:]):
            layers += [torch.nn.Linear(a, b), torch.nn.Sigmoid()]
        return torch.nn.Sequential(*layers[:-1])

    settings = {"seeds": SEEDS, "epochs": 5 if TINY else 1, "lr": 0.5 if TINY else 0.1, "batch_size": 32,
                "loss": "cross_entropy",
                "dtype": "float64" if TINY else "float32", "probe_every": 0}
    with tempfile.TemporaryDirectory() as tmp:
        seconds = {}
        for stack in (False, True):
            start = time.perf_counter()
            bp.compare(factory, RULES, bundle, out=Path(tmp) / str(stack), stack=stack, **settings)
            seconds[stack] = time.perf_counter() - start
        print(f"{'run':10} {'test accuracy, separate':>24} {'stacked':>10}")
        worst = 0.0
        for rule in RULES:
            for seed in SEEDS:
                a, b = (json.loads((Path(tmp) / str(s) / f"{rule}-seed{seed}" / "summary.json").read_text())
                        ["final"]["test_accuracy"] for s in (False, True))
                worst = max(worst, abs(a - b))
                print(f"{rule}-seed{seed:<5} {a:>24.2f} {b:>10.2f}")
    print(f"largest difference {worst:.2g} points; wall time separate {seconds[False]:.1f} s, "
          f"stacked {seconds[True]:.1f} s")


if __name__ == "__main__":
    main()
