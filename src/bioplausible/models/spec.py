"""The model registry and model spec strings: ``"mlp:784-500-10,activation=tanh"``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .._registry import Registry
from ..errors import ConfigError

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def coerce_option(value: str) -> Any:
    """``"true"`` -> True, ``"3"`` -> 3, ``"0.5"`` -> 0.5, anything else stays a string."""
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def parse_model_spec(spec: str) -> tuple[str, str | None, dict[str, Any]]:
    """Split ``"mlp:784-500-10,activation=tanh"`` into ``("mlp", "784-500-10", {...})``."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"model spec must be a non-empty string like 'mlp:784-500-10', got {spec!r}")
    head, *opts = [s.strip() for s in spec.split(",")]
    name, _, arg = head.partition(":")
    options: dict[str, Any] = {}
    for opt in opts:
        key, eq, value = opt.partition("=")
        if not eq or not key:
            raise ConfigError(f"model option {opt!r} in {spec!r} must look like key=value")
        options[key.strip()] = coerce_option(value.strip())
    return name.strip().lower(), (arg or None), options


__all__ = ["MODELS", "coerce_option", "parse_model_spec"]
