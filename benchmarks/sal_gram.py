"""Gram images and effective ranks of SAL's learned matrices (paper Fig. 3), after a short run.

    BIOPLAUSIBLE_DATA=/work/shared/datasets python benchmarks/sal_gram.py [--epochs 3] [--subset 10000]

Trains the Table 1 network with the defaults of rule ``sal`` (lr 0.3) on an MNIST subset and writes
``benchmarks/results/sal_gram_mnist_quick.png`` (XᵀX of every W, B, Q, R) and the effective ranks
(``rule.metrics``) to ``sal_gram_mnist_quick.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import bioplausible as bp
from bioplausible.rules.sal.sal_diag import gram_images

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--subset", type=int, default=10000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = bp.build_model("mlp:784-200-200-200-10", input_shape=(784,), num_classes=10, activation="relu")
    cfg = {"progress": False, "dataset": {"name": "mnist", "subset": args.subset}}
    res = bp.fit(model, "sal", "mnist", config=cfg, epochs=args.epochs, lr=0.3, loss="mse_batchmean",
                 batch_size=256)
    png = gram_images(res.rule, res.model, RESULTS / "sal_gram_mnist_quick.png")
    out = {"epochs": args.epochs, "subset": args.subset, "test_accuracy": res.history[-1]["test_accuracy"],
           "metrics": res.rule.metrics(res.model)}
    png.with_suffix(".json").write_text(json.dumps(out, indent=1))
    print(png, json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
