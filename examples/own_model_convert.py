"""Train your own PyTorch model with a feedback rule, in your own training loop.

``bp.convert`` swaps every ``nn.Linear`` / ``nn.Conv2d`` of your model for a layer whose backward
pass carries the error through the rule's feedback tensor; the rest of the loop is ordinary
PyTorch. Here: a small CNN on MNIST (or random data with ``--tiny``), trained by feedback
alignment, Kolen-Pollack and weight mirrors, and the trained weights loaded back into a plain
instance of the same class.

    python examples/own_model_convert.py            # MNIST, 1 epoch per rule (about a minute)
    python examples/own_model_convert.py --tiny     # random data, seconds (what the tests run)
"""

from __future__ import annotations

import os
import sys

import torch
from torch import nn

import bioplausible as bp

TINY = "--tiny" in sys.argv or os.environ.get("BIOPLAUSIBLE_EXAMPLE_TINY") == "1"


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 5, padding=2)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(8 * 14 * 14, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(torch.relu(self.conv(x)))
        return self.fc2(torch.relu(self.fc1(torch.flatten(h, 1))))


def data():
    if TINY:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(128, 1, 28, 28, generator=g)
        return (x[:96], torch.randint(0, 10, (96,), generator=g)), (x[96:], torch.randint(0, 10, (32,), generator=g))
    mnist = bp.load_dataset("mnist")  # standardised tensors, shape (N, 1, 28, 28)
    return (mnist.train.x, mnist.train.y), (mnist.test.x, mnist.test.y)


def main() -> None:
    torch.manual_seed(0)
    (x, y), (xt, yt) = data()
    for name in ("fa", "kp", "wm"):
        rule = bp.make(name)
        model = bp.convert(SmallCNN(), rule)          # a copy: weights copied, feedback created
        opt = torch.optim.SGD(rule.param_groups(model, lr=0.01), momentum=0.9)
        for i in range(0, len(x), 32):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[i:i + 32]), y[i:i + 32])
            loss.backward()                            # hidden layers receive B-propagated errors
            opt.step()
            rule.after_step(model)                     # WM's mirror phase; a no-op for fa and kp
        with torch.no_grad():
            accuracy = (model(xt).argmax(1) == yt).float().mean().item() * 100
        plain = SmallCNN()
        plain.load_state_dict(bp.plain_state_dict(model))  # your class, trained by the rule
        print(f"{name}: test accuracy {accuracy:.2f} %, last batch loss {loss.item():.3f}")


if __name__ == "__main__":
    main()
