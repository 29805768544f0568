"""Plain ``nn.Module`` architectures used by the papers, built from a short spec string.

Any other model by import path: ``build_model("mypkg.nets:build_net,width=64")``.

``build_model("mlp:784-500-10", activation="sigmoid")``, ``build_model("lenet",
input_shape=(3, 32, 32))``, ``build_model("npcnn", num_classes=100)``,
``build_model("resnet20,batchnorm=false")``. A spec may carry options after commas:
``"mlp:784-300-300-100-10,activation=relu,init=normal:0.05"``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import ConfigError
from .autoencoder import autoencoder
from .cnn import LeNet5, NPConvNet
from .mlp import ACTIVATIONS, MLP, init_weights
from .resnet_cifar import CifarResNet, resnet_factory
from .spec import MODELS, parse_model_spec


def build_model(
    spec: str,
    *,
    input_shape: tuple[int, ...] | None = None,
    num_classes: int | None = None,
    **options: Any,
) -> nn.Module:
    """Build the model named by ``spec`` for data of ``input_shape`` with ``num_classes`` outputs.

    Options in the spec string and keyword ``options`` are merged (keywords win). A spec
    ``pkg.module:callable[,key=value...]`` builds the user's own model and checks it against
    ``input_shape`` (:mod:`bioplausible.models.custom`).
    """
    from .custom import build_custom, is_import_spec

    if is_import_spec(spec):
        return build_custom(spec, input_shape=input_shape, num_classes=num_classes, **options)
    name, arg, spec_options = parse_model_spec(spec)
    factory = MODELS.get(name)
    spec_options.update(options)
    try:
        return factory(arg, input_shape=input_shape, num_classes=num_classes, **spec_options)
    except TypeError as exc:  # unknown keyword option
        raise ConfigError(f"model {name!r}: {exc}") from None


def _mlp(arg, *, input_shape=None, num_classes=None, **opts) -> nn.Module:
    if not arg:
        raise ConfigError("mlp needs layer sizes, e.g. 'mlp:784-500-10'")
    try:
        sizes = [int(s) for s in arg.split("-")]
    except ValueError:
        raise ConfigError(f"mlp sizes {arg!r} must be integers joined by '-', e.g. 784-500-10") from None
    if input_shape is not None:
        n_in = 1
        for d in input_shape:
            n_in *= int(d)
        if sizes[0] != n_in:
            raise ConfigError(
                f"mlp:{arg} takes {sizes[0]} inputs but the data have {n_in} "
                f"(shape {tuple(input_shape)}); use mlp:{n_in}-...")
    if num_classes is not None and sizes[-1] != num_classes:
        raise ConfigError(
            f"mlp:{arg} has {sizes[-1]} outputs but the task has {num_classes}; "
            f"end the sizes with -{num_classes}")
    return MLP(sizes, **opts)


def _lenet(arg, *, input_shape=None, num_classes=None, **opts) -> nn.Module:
    return LeNet5(input_shape=tuple(input_shape or (1, 28, 28)), num_classes=num_classes or 10, **opts)


def _npcnn(arg, *, input_shape=None, num_classes=None, **opts) -> nn.Module:
    return NPConvNet(input_shape=tuple(input_shape or (3, 32, 32)), num_classes=num_classes or 10, **opts)


MODELS.add("mlp", _mlp)
MODELS.add("lenet", _lenet)
MODELS.add("npcnn", _npcnn)
MODELS.add("autoencoder", autoencoder)
for _depth in (20, 32, 56):  # He et al. 2016 §4.2; CifarResNet also builds 44 and 110
    MODELS.add(f"resnet{_depth}", resnet_factory(_depth))


def list_models() -> list[str]:
    """Names accepted by :func:`build_model` (besides ``pkg.module:callable`` import specs)."""
    return MODELS.names()


__all__ = [
    "ACTIVATIONS",
    "MLP",
    "MODELS",
    "CifarResNet",
    "LeNet5",
    "NPConvNet",
    "build_model",
    "init_weights",
    "list_models",
    "parse_model_spec",
]
