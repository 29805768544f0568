"""The rule registry: ``@register("kp")`` on a Rule subclass, :func:`make` and :func:`list_rules`.

Importing this module imports :mod:`bioplausible.rules` first (its package), which imports every
built-in family and every installed plugin family, so :func:`make` sees them all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from .._registry import Registry
from ..core.rule import Rule
from ..errors import ConfigError

T = TypeVar("T")

RULES: Registry[Any] = Registry("rule", discover=True)


def register(name: str) -> Callable[[T], T]:
    """Class decorator: ``@register("fa")`` registers a Rule subclass under ``name``."""
    return RULES.decorator(name)


def make(name: str, **config: Any):
    """Instantiate the rule registered as ``name`` with its hyperparameters ``config``."""
    return RULES.get(name)(**config)


def list_rules() -> list[str]:
    """Names of every registered learning rule, sorted (the rule families are imported first)."""
    return RULES.names()


def convert(model: nn.Module, rule: Any = "fa", **rule_config: Any) -> nn.Module:
    """Return a copy of ``model`` whose backward pass uses ``rule``'s feedback.

    ``rule`` is a rule name (``"fa"``, ``"usf"``, ``"brsf"``, ``"frsf"``, ``"kp"``, ``"wm"``,
    ``"dfa"``) with its options as keywords, or a rule instance (keep it when the rule needs a
    call per step, e.g. ``wm``'s :meth:`after_step`). Equivalent to ``rule.prepare(model)``.

    Rules whose update is more than ``loss.backward()`` — they learn their feedback or relax
    inside ``rule.train_step`` (``np``, ``sg``, ``ar``, ``sal``, ``bfa``, the ghost rules, ...) —
    are refused (:class:`ConfigError`): a plain loop would silently train something else. A
    warning names the trainable layers the conversion leaves on exact backprop (``Conv1d``,
    ``LSTM``, ``Embedding``, attention, ...).
    """
    if isinstance(rule, str):
        rule = make(rule, **rule_config)
    elif rule_config:
        raise ConfigError("pass rule options either with a rule name or to make(), not both")
    if type(rule).train_step is not Rule.train_step:
        raise ConfigError(
            f"convert: rule {rule.name!r} forms its update in rule.train_step(model, x, y, loss_fn), "
            f"which a plain loss.backward() loop never calls (its feedback would never learn); "
            f"use bp.fit, or rule.prepare(model) with rule.train_step + opt.step + rule.after_step "
            f"per batch")
    return rule.prepare(model)


__all__ = ["RULES", "convert", "list_rules", "make", "register"]
