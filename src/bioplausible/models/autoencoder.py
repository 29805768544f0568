"""The MNIST autoencoder of Lansdell, Prakash & Kording 2020 (Fig. 3, Table 2a).

784-200-2-200-784 with activations tanh, identity (the 2-D code), tanh, relu (the
reconstruction), as a plain :class:`~bioplausible.models.mlp.MLP` (``nn.Sequential``), so
every feedback rule and ``convert`` handle it. ``width`` sets the two hidden layers (the paper
says 200; the authors' code builds 50), ``code`` the bottleneck. Train it with targets equal to
the inputs (an autoencoder dataset or ``x`` as ``y``) and a reconstruction loss (``mse_sum``,
the paper's summed squared error).

    build_model("autoencoder", input_shape=(784,))          # 784-200-2-200-784
    build_model("autoencoder:50")                           # the authors' code: 784-50-2-50-784
"""

from __future__ import annotations

from ..errors import ConfigError
from .mlp import MLP

ACTIVATIONS = ("tanh", "identity", "tanh")


def autoencoder(arg: str | None = None, *, input_shape=None, num_classes=None, width: int | None = None,
                code: int = 2, output_activation: str = "relu", init: str = "default",
                bias: bool = True) -> MLP:
    """``autoencoder[:WIDTH]``: n-WIDTH-code-WIDTH-n (n = the flattened input size, 784 by default)."""
    n = 1
    for d in input_shape or (784,):
        n *= int(d)
    if arg is not None and width is not None:
        raise ConfigError("give the autoencoder's width either as autoencoder:WIDTH or as width=, not both")
    try:
        w = int(arg) if arg is not None else int(width if width is not None else 200)
        code = int(code)
    except ValueError:
        raise ConfigError(f"autoencoder width and code must be integers, got {arg or width!r}, {code!r}") from None
    if w < 1 or code < 1:
        raise ConfigError(f"autoencoder width and code must be positive, got {w} and {code}")
    return MLP([n, w, code, w, n], activation=list(ACTIVATIONS), output_activation=output_activation,
               init=init, bias=bias)


__all__ = ["autoencoder"]
