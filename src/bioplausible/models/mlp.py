"""Multilayer perceptron as a plain ``nn.Sequential``: Flatten, then (Linear, activation) pairs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "identity": nn.Identity,
    "linear": nn.Identity,
    "leaky_relu": nn.LeakyReLU,
    "hardsigmoid": nn.Hardsigmoid,
    "softplus": nn.Softplus,
}


def make_activation(name: str) -> nn.Module:
    key = str(name).lower()
    if key not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; choose from {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[key]()


def init_weights(model: nn.Module, init: str = "default", generator: torch.Generator | None = None) -> None:
    """Re-initialise every Linear/Conv2d weight; biases are set to zero unless ``init='default'``.

    ``default`` keeps PyTorch's initialisation; ``xavier`` is Glorot-uniform; ``normal:STD``
    draws N(0, STD²) (activation relaxation uses ``normal:0.05``); ``uniform:A`` draws U(−A, A).
    """
    if init in (None, "default"):
        return
    kind, _, arg = str(init).partition(":")
    if kind not in ("xavier", "normal", "uniform") or (kind == "xavier" and arg):
        raise ConfigError(f"unknown init {init!r}; use default, xavier, normal:STD or uniform:A")
    try:
        scale = float(arg or 0.05)
    except ValueError:
        scale = float("nan")
    if not (math.isfinite(scale) and scale > 0):
        raise ConfigError(f"init {init!r}: the scale after ':' must be a positive number, e.g. {kind}:0.05")
    for m in model.modules():
        if not isinstance(m, (nn.Linear, nn.Conv2d)):
            continue
        with torch.no_grad():
            if kind == "xavier":
                fan_out, fan_in = m.weight.shape[0], m.weight[0].numel()
                a = math.sqrt(6.0 / (fan_in + fan_out))
                m.weight.uniform_(-a, a, generator=generator)
            elif kind == "normal":
                m.weight.normal_(0.0, scale, generator=generator)
            else:  # uniform (the kinds were checked above)
                m.weight.uniform_(-scale, scale, generator=generator)
            if m.bias is not None:
                m.bias.zero_()


class MLP(nn.Sequential):
    """``sizes = [784, 500, 10]`` gives Flatten, Linear(784, 500), act, Linear(500, 10), out_act.

    ``activation`` is one name for every hidden layer or a list with one per hidden layer.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        activation: str | Sequence[str] = "relu",
        output_activation: str = "identity",
        bias: bool = True,
        init: str = "default",
    ) -> None:
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or any(s < 1 for s in sizes):
            raise ConfigError(f"mlp needs at least two positive layer sizes, got {sizes}")
        n_hidden = len(sizes) - 2
        if isinstance(activation, str):
            acts = [activation] * n_hidden
        else:
            acts = list(activation)
            if len(acts) != n_hidden:
                raise ConfigError(f"{len(acts)} activations given for {n_hidden} hidden layers")
        layers: list[nn.Module] = [nn.Flatten()]
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1], bias=bool(bias)))
            last = i == len(sizes) - 2
            layers.append(make_activation(output_activation if last else acts[i]))
        super().__init__(*layers)
        self.sizes = sizes
        init_weights(self, init)
