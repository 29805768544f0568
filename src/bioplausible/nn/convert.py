"""``convert(model, rule)``: swap ``nn.Linear``/``nn.Conv2d`` for their feedback versions.

The swap is a per-layer-type ``functools.singledispatch`` (:func:`to_feedback_layer`); other
modules (activations, pooling, dropout, normalisation, flatten) are kept and backpropagate
exactly. The model is deep-copied; the copy's weight and bias Parameters are moved into the new
layers unchanged (values, ``requires_grad``), so the converted model computes the same forward
pass and its ``state_dict`` holds the same keys plus ``<layer>.feedback`` (or
``<layer>.direct_feedback`` for DFA).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from functools import singledispatch
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import UninitializedParameter

from ..errors import ConfigError, IncompatibleModelError
from .layers import FEEDBACK_LAYERS, FeedbackConv2d, FeedbackLinear


@singledispatch
def to_feedback_layer(module: nn.Module, name: str) -> nn.Module | None:
    """The feedback version of ``module`` (sharing its Parameters, no feedback yet) or None."""
    return None


def _adopt(layer: nn.Module, module: nn.Module, name: str) -> nn.Module:
    if isinstance(module.weight, UninitializedParameter):
        raise IncompatibleModelError(
            f"layer {name!r} ({type(module).__name__}) is not initialised yet; run one forward "
            f"pass through the model before converting it")
    layer.weight = module.weight
    layer.bias = module.bias
    layer.train(module.training)
    layer.layer_name = name
    return layer


@to_feedback_layer.register
def _(module: nn.Linear, name: str) -> nn.Module:
    w = module.weight
    layer = FeedbackLinear(module.in_features, module.out_features, bias=module.bias is not None,
                           device="meta", dtype=w.dtype, feedback=False)
    return _adopt(layer, module, name)


@to_feedback_layer.register
def _(module: nn.Conv2d, name: str) -> nn.Module:
    w = module.weight
    try:
        layer = FeedbackConv2d(module.in_channels, module.out_channels, module.kernel_size,
                               module.stride, module.padding, module.dilation, module.groups,
                               module.bias is not None, module.padding_mode, device="meta",
                               dtype=w.dtype, feedback=False)
    except IncompatibleModelError as exc:
        raise IncompatibleModelError(f"layer {name!r}: {exc}") from None
    return _adopt(layer, module, name)


def _check_previous(new: nn.Module, old: nn.Module) -> None:
    """A model converted before must not carry a feedback tensor of the wrong shape."""
    previous = getattr(old, "feedback", None)
    if isinstance(previous, torch.Tensor) and previous.shape != new.weight.shape:
        raise IncompatibleModelError(
            f"layer {new.layer_name!r}: feedback has shape {tuple(previous.shape)} but its "
            f"weight has shape {tuple(new.weight.shape)} (B is stored in W's layout)")


def swap_layers(model: nn.Module, feedback: bool = True,
                generator: torch.Generator | None = None) -> nn.Module:
    """Deep-copy ``model`` and replace every Linear/Conv2d by a feedback layer.

    With ``feedback=True`` each new layer gets a W-shaped ``feedback`` drawn with
    :func:`~bioplausible.nn.layers.init_feedback`'s default from ``generator`` (a converted
    model's old feedback is not carried over: restore B with ``load_state_dict``);
    ``feedback=False`` creates none (DFA). Shared modules stay shared.
    Raises :class:`IncompatibleModelError` if the model has no Linear or Conv2d layer.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"convert needs an nn.Module, got {type(model).__name__}")
    model = copy.deepcopy(model)
    swapped: dict[int, tuple[nn.Module, nn.Module]] = {}
    root = to_feedback_layer(model, type(model).__name__)
    if root is not None:
        swapped[id(model)] = (root, model)
        model = root
    else:
        for name, child in list(model.named_modules(remove_duplicate=False))[1:]:
            if id(child) not in swapped:
                swapped[id(child)] = (to_feedback_layer(child, name), child)
            new = swapped[id(child)][0]
            if new is not None:
                parent_name, _, child_name = name.rpartition(".")
                setattr(model.get_submodule(parent_name), child_name, new)
    pairs = [(new, old) for new, old in swapped.values() if new is not None]
    if not pairs:
        raise IncompatibleModelError(
            f"{type(model).__name__} has no nn.Linear or nn.Conv2d layer, so a feedback rule has "
            f"nothing to train; feedback rules need at least one Linear or Conv2d layer")
    for new, old in pairs:
        _check_previous(new, old)
        if feedback:
            new.add_feedback(generator)
    exact = exact_trainable_layers(model)
    if exact:
        warnings.warn(f"convert: {len(exact)} trainable layer(s) stay on exact backprop (only "
                      f"nn.Linear and nn.Conv2d use the rule's feedback): {', '.join(exact)}",
                      stacklevel=3)
    return model


_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def exact_trainable_layers(model: nn.Module) -> list[str]:
    """Modules with trainable weights of their own that a converted model backpropagates exactly:
    ``Conv1d``, ``LSTM``, ``Embedding``, attention (``nn.MultiheadAttention`` applies its input
    and output projections itself, so even a converted ``out_proj`` is exact), ... —
    "name (Class)" each. Normalisation layers' per-channel scale and shift are left out."""
    out = []
    attention = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    inside = {id(m.out_proj) for m in attention}
    for name, module in model.named_modules():
        if isinstance(module, _NORMS) or id(module) in inside:
            continue
        if isinstance(module, nn.MultiheadAttention):
            out.append(f"{name or type(module).__name__} (MultiheadAttention: input and output projections)")
            continue
        if isinstance(module, FEEDBACK_LAYERS):
            continue
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            out.append(f"{name or type(module).__name__} ({type(module).__name__})")
    return out


def feedback_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(qualified name, layer)`` for every feedback layer of ``model``, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, FEEDBACK_LAYERS):
            yield (name or module.layer_name), module


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
        from .._registry import make

        rule = make(rule, **rule_config)
    elif rule_config:
        raise ConfigError("pass rule options either with a rule name or to make(), not both")
    from ..core.rule import Rule

    if type(rule).train_step is not Rule.train_step:
        raise ConfigError(
            f"convert: rule {rule.name!r} forms its update in rule.train_step(model, x, y, loss_fn), "
            f"which a plain loss.backward() loop never calls (its feedback would never learn); "
            f"use bp.fit, or rule.prepare(model) with rule.train_step + opt.step + rule.after_step "
            f"per batch")
    return rule.prepare(model)


__all__ = ["convert", "feedback_layers", "swap_layers", "to_feedback_layer"]
