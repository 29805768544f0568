"""A new learning rule in one file: direct random target projection (DRTP).

DRTP (Frenkel, Lefebvre & Bol 2021, "Learning without feedback: fixed random learning signals
allow for feedforward training of deep neural networks", Front. Neurosci. 15:629892) trains each
hidden layer from the *target* alone, projected by a fixed random matrix: the learning signal of
hidden layer l is ``δ_l = (y* B_l) ⊙ f′(a_l)`` (row form, ``B_l`` of shape ``(n_classes, n_l)``),
so no error has to travel back and a layer can update as soon as its forward pass is done. The
output layer learns from its true error. (The sign of the projection does not matter: B is drawn
symmetric around zero.)

A rule is a class with ``@bp.register(name)``: ``defaults`` lists its options, ``prepare`` creates
the tensors it owns (checkpointed with the run), ``train_step`` fills ``.grad`` and returns the
loss and output; any ``torch.optim`` optimizer applies the update, and ``bp.fit``, the probe,
presets and the command line (``--rule drtp`` once this module is imported) work unchanged.

    python examples/new_rule.py              # MNIST 784-256-10, 2 epochs, DRTP vs BP
    python examples/new_rule.py --tiny       # random data, seconds (what the tests run)
"""

from __future__ import annotations

import os
import sys
from typing import Any, ClassVar

import torch
from torch import nn

import bioplausible as bp
from bioplausible.core.rule import StepResult

TINY = "--tiny" in sys.argv or os.environ.get("BIOPLAUSIBLE_EXAMPLE_TINY") == "1"


@bp.register("drtp")
class DirectRandomTargetProjection(bp.Rule):
    """DRTP: hidden layers learn from a fixed random projection of the one-hot target.

    ``δ_l = (y* B_l) ⊙ f′(a_l)`` for every hidden layer, the true error for the output layer
    (Frenkel, Lefebvre & Bol 2021).

    Options: ``scale`` — std of B's entries, N(0, scale²) (1.0).

    Models: MLPs, ``nn.Sequential`` of ``nn.Linear`` and elementwise activations.
    """

    family = "feedback"
    paper = "Frenkel, Lefebvre & Bol 2021"
    summary = "hidden layers learn from a fixed random projection of the target: δ_l = (y* B_l) ⊙ f′(a_l)"
    defaults: ClassVar[dict[str, Any]] = {"scale": 1.0}

    def validate(self) -> None:
        self.check_number("scale", 0.0, positive=True)

    def prepare(self, model: nn.Module, example: torch.Tensor | None = None) -> nn.Module:
        self.linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        classes = self.linears[-1].out_features
        gen = self.generator(self.linears[0].weight.device)
        for i, layer in enumerate(self.linears[:-1]):
            b = torch.randn(classes, layer.out_features, generator=gen, device=gen.device)
            self.own_buffer(f"B.{i}", b * self.config["scale"])
        return model

    def train_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn) -> StepResult:
        for p in model.parameters():
            p.grad = None
        target = nn.functional.one_hot(y, self.linears[-1].out_features).to(x.dtype)
        h, hidden = x, 0
        for module in model:  # each block sees a detached input: no error flows between layers
            h = module(h)
            is_hidden_output = (not isinstance(module, nn.Linear) and hidden < len(self.linears) - 1
                                and self._ends_layer(model, module))
            if is_hidden_output:
                signal = target @ self.owned.get(f"B.{hidden}")
                torch.autograd.backward(h, signal)       # δ = (y* B) ⊙ f′(a), W.grad = δᵀ h_in
                h, hidden = h.detach(), hidden + 1
        loss = loss_fn(h, y)
        loss.backward()                                  # the output layer: its true error
        return StepResult(loss.detach(), h.detach())

    def _ends_layer(self, model: nn.Sequential, module: nn.Module) -> bool:
        """Whether ``module`` is the activation right after a hidden Linear."""
        children = list(model)
        i = children.index(module)
        return i > 0 and isinstance(children[i - 1], nn.Linear)


def main() -> None:
    if TINY:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(300, 20, generator=g)
        y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
        data, spec, epochs = bp.as_bundle((x[:240], y[:240]), (x[240:], y[240:])), "mlp:20-64-4", 5
    else:
        data, spec, epochs = bp.load_dataset("mnist", flatten=True), "mlp:784-256-10", 2
    for rule in ("drtp", "bp"):
        torch.manual_seed(0)
        model = bp.build_model(spec, activation="tanh")
        result = bp.fit(model, rule, data, epochs=epochs, lr=0.01, batch_size=32,
                        loss="cross_entropy", probe_every=20)
        last = result.history[-1]
        print(f"{rule:5} test accuracy {last['test_accuracy']:.2f} %, "
              f"angle to BP {result.summary.get('grad_angle_mean', 0.0):.1f}°")


if __name__ == "__main__":
    main()
