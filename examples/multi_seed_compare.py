"""Compare learning rules over several seeds from Python: mean ± std of the test accuracy and of
the angle between each rule's update and backprop's gradient.

    python examples/multi_seed_compare.py           # MNIST 784-256-10, 2 epochs, seeds 0-2
    python examples/multi_seed_compare.py --tiny    # random data, seconds (what the tests run)

The command line does the same with ``bioplausible compare --rules bp,fa,dfa --seeds 0,1,2``.
"""

from __future__ import annotations

import os
import sys

import torch

import bioplausible as bp
from bioplausible.experiments.jobs import mean_std

TINY = "--tiny" in sys.argv or os.environ.get("BIOPLAUSIBLE_EXAMPLE_TINY") == "1"
RULES = ("bp", "fa", "dfa", "usf")
SEEDS = (0, 1) if TINY else (0, 1, 2)


def data():
    if TINY:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(160, 20, generator=g)
        y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
        return bp.as_bundle((x[:128], y[:128]), (x[128:], y[128:])), "mlp:20-32-4"
    return bp.load_dataset("mnist", flatten=True), "mlp:784-256-10"


def main() -> None:
    bundle, spec = data()
    print(f"{'rule':6} {'test accuracy (%)':>20} {'angle to BP (deg)':>20}")
    for rule in RULES:
        accuracy, angle = [], []
        for seed in SEEDS:
            torch.manual_seed(seed)
            model = bp.build_model(spec, activation="tanh")
            result = bp.fit(model, rule, bundle, epochs=5 if TINY else 2, lr=0.05, seed=seed,
                            batch_size=32, loss="cross_entropy", probe_every=2 if TINY else 200)
            accuracy.append(result.history[-1]["test_accuracy"])
            angle.append(result.summary.get("grad_angle_mean"))
        (ma, sa, n), (mg, sg, _) = mean_std(accuracy), mean_std(angle)
        angle_text = "–" if mg is None else f"{mg:.1f} ± {sg:.1f}"
        print(f"{rule:6} {f'{ma:.2f} ± {sa:.2f}':>20} {angle_text:>20}   (n = {n})")


if __name__ == "__main__":
    main()
