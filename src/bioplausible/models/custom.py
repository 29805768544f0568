"""The user's own model by import path: ``pkg.module:build_net,key=value,...``.

``build_model("mypkg.models:build_net,width=64,act=relu", input_shape=..., num_classes=...)``
imports ``mypkg.models``, calls ``build_net(width=64, act="relu")`` and checks that it returns
an ``nn.Module``. ``input_shape`` and ``num_classes`` are passed on when the callable accepts
them (a parameter of that name or ``**kwargs``) and the spec does not set them itself. Values
are read as in the built-in specs (``true``/``false``, integers, floats, else strings).

When ``input_shape`` is known (the CLI, configs and presets pass the dataset's), one forward
pass on a zero batch of that shape, in eval mode and without gradients, checks the model
before anything trains: a model that cannot take the inputs, or whose output is not
``(batch, num_classes)``, is a :class:`~bioplausible.errors.ConfigError` of one line.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, IncompatibleModelError
from .spec import MODELS, coerce_option

_IMPORT_HEAD = re.compile(r"^\s*[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*\s*$")


def is_import_spec(spec: Any) -> bool:
    """True for ``pkg.module:callable[,options]`` (a dot or an identifier before the colon)."""
    if not isinstance(spec, str):
        return False
    head = spec.split(",", 1)[0]
    module = head.partition(":")[0]
    return bool(_IMPORT_HEAD.match(head)) and module.strip().lower() not in MODELS.names()


def parse_import_spec(spec: str) -> tuple[str, str, dict[str, Any]]:
    """``"pkg.mod:fn,a=1"`` -> ``("pkg.mod", "fn", {"a": 1})`` (case is kept)."""
    head, *opts = [s.strip() for s in spec.split(",")]
    module, _, attr = head.partition(":")
    options: dict[str, Any] = {}
    for opt in opts:
        key, eq, value = opt.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"model option {opt!r} in {spec!r} must look like key=value")
        options[key.strip()] = coerce_option(value.strip())
    return module.strip(), attr.strip(), options


def resolve_callable(spec: str) -> Callable[..., Any]:
    """Import the callable named by ``spec`` (one-line errors for every way this can fail)."""
    from ..imports import resolve

    obj = resolve(spec, "model")
    if not callable(obj):
        attr = spec.split(",", 1)[0].partition(":")[2].strip()
        raise ConfigError(f"model {spec!r}: {attr!r} is a {type(obj).__name__}, not a callable "
                          f"returning an nn.Module")
    return obj


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def check_model(model: nn.Module, spec: str, input_shape: tuple[int, ...],
                num_classes: int | None = None) -> None:
    """One forward pass on zeros ``(2, *input_shape)``: the model must take them and return
    ``(2, num_classes)`` (when ``num_classes`` is given)."""
    param = next(iter(model.parameters()), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros((2, *(int(d) for d in input_shape)), dtype=dtype, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # noqa: BLE001 - any failure means: wrong input shape for this model
        first = " ".join(str(exc).split()) or type(exc).__name__
        raise IncompatibleModelError(
            f"model {spec!r} cannot take the dataset's inputs of shape {tuple(input_shape)} "
            f"(batch dimension first): {type(exc).__name__}: {first[:300]}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise IncompatibleModelError(f"model {spec!r} returns a {type(out).__name__}; it must return one "
                                     f"tensor of shape (batch, classes)")
    if num_classes is not None and tuple(out.shape) != (2, int(num_classes)):
        raise IncompatibleModelError(
            f"model {spec!r} maps inputs of shape {tuple(input_shape)} to outputs of shape "
            f"{tuple(out.shape[1:])}, but the dataset has {num_classes} classes; it must output "
            f"({num_classes},) per example")


def build_custom(spec: str, *, input_shape: tuple[int, ...] | None = None,
                 num_classes: int | None = None, **options: Any) -> nn.Module:
    """Build (and, given ``input_shape``, check) the model named by an import-path ``spec``."""
    fn = resolve_callable(spec)
    _, _, kwargs = parse_import_spec(spec)
    kwargs.update(options)
    for key, value in (("input_shape", input_shape), ("num_classes", num_classes)):
        if value is not None and key not in kwargs and _accepts(fn, key):
            kwargs[key] = tuple(value) if key == "input_shape" else value
    try:
        model = fn(**kwargs)
    except TypeError as exc:
        if kwargs:
            raise ConfigError(f"model {spec!r}: {exc}") from None
        raise
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {spec!r} returned a {type(model).__name__}, not an nn.Module")
    if input_shape is not None:
        check_model(model, spec, tuple(input_shape), num_classes)
    return model


__all__ = ["build_custom", "check_model", "is_import_spec", "parse_import_spec", "resolve_callable"]
