"""The probe in your own training loop: how far is a rule's update from backprop's gradient?

``bp.Probe`` compares, on the same batch and at the same parameters, the update a rule writes
into ``.grad`` with the true BP gradient: ``probe.reference(...)`` before the rule's step,
``probe.compare(...)`` after it. For rules with feedback weights it also measures how the
feedback aligns with the forward weights (weight angle, sign congruence, ‖W − B‖/‖W‖; the
definitions are in docs/notation.md). Here feedback alignment learns on a sigmoid MLP and its
hidden layer's update turns towards BP's (Lillicrap et al. 2016, Fig. 2).

    python examples/probe_own_loop.py               # MNIST 784-100-10, one epoch
    python examples/probe_own_loop.py --tiny        # random data, seconds (what the tests run)
"""

from __future__ import annotations

import os
import sys

import torch

import bioplausible as bp

TINY = "--tiny" in sys.argv or os.environ.get("BIOPLAUSIBLE_EXAMPLE_TINY") == "1"


def main() -> None:
    torch.manual_seed(0)
    if TINY:
        x = torch.randn(256, 20)
        y = (x[:, :4].sum(1) > 0).long()
        spec, every = "mlp:20-32-2", 40
    else:
        mnist = bp.load_dataset("mnist", flatten=True)
        x, y, spec, every = mnist.train.x, mnist.train.y, "mlp:784-100-10", 100
    rule = bp.make("fa")
    model = rule.prepare(bp.build_model(spec, activation="sigmoid"), example=x[:2])
    opt = rule.build_optimizer(model, {"name": "sgd", "lr": 0.5})
    loss = bp.get_loss("cross_entropy")
    probe = bp.Probe(every=every)
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, len(x), 32)]
    epochs = 30 if TINY else 1
    for step, (xb, yb) in enumerate(batches * epochs, start=1):
        if probe.due(step):
            reference = probe.reference(rule, model, xb, yb, loss)  # BP's gradient, this batch
        rule.train_step(model, xb, yb, loss)                        # the rule fills .grad
        if probe.due(step):
            record = probe.compare(rule, model, reference)          # before opt.step()
            print(f"step {step:4d}: hidden layer's update {record['grad_angle/1.weight']:5.1f}° from BP's, "
                  f"W vs B {record['weight_angle']:5.1f}°, sign congruence {record['sign_congruence']:.2f}")
        opt.step()
        rule.after_step(model)


if __name__ == "__main__":
    main()
