"""The plain model back from a converted (or rule-trained) one.

:func:`~bioplausible.nn.convert` swaps ``nn.Linear``/``nn.Conv2d`` for feedback layers, adds
feedback tensors (``feedback``, ``direct_feedback``) and, for DFA, forward hooks on the model.
:func:`to_plain` undoes all of that on a copy: every feedback layer becomes the
``nn.Linear``/``nn.Conv2d`` it came from, holding the trained weight and bias; DFA hooks are
removed; feedback tensors that a rule stored on plain ``nn.Linear``/``nn.Conv2d`` layers
(activation relaxation's learned ψ) are dropped. :func:`plain_state_dict` gives the same keys
without copying the model, so ``original.load_state_dict(plain_state_dict(trained),
strict=True)`` restores the user's own architecture::

    rule = bp.make("fa")
    net = rule.prepare(MyNet())            # or bp.convert(MyNet(), "fa")
    ...                                    # train
    MyNet().load_state_dict(bp.plain_state_dict(net))   # strict by default
    plain = bp.to_plain(net)               # an ordinary module, no feedback anywhere
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import nn

from ..errors import ConfigError
from .layers import FEEDBACK_LAYERS, FeedbackConv2d, FeedbackLinear

#: Tensor names that rules add to a layer; a plain Linear/Conv2d has only weight and bias.
FEEDBACK_NAMES = ("feedback", "direct_feedback")


def _plain_layer(layer: nn.Module) -> nn.Module:
    """The ``nn.Linear``/``nn.Conv2d`` equivalent of a feedback layer, sharing its Parameters."""
    w = layer.weight
    if isinstance(layer, FeedbackLinear):
        new: nn.Module = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                                   device="meta", dtype=w.dtype)
    elif isinstance(layer, FeedbackConv2d):
        new = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                        layer.padding, layer.dilation, layer.groups, layer.bias is not None,
                        layer.padding_mode, device="meta", dtype=w.dtype)
    else:  # pragma: no cover - FEEDBACK_LAYERS holds exactly the two classes above
        raise TypeError(f"not a feedback layer: {type(layer).__name__}")
    new.weight = layer.weight
    new.bias = layer.bias
    new.train(layer.training)
    return new


def _is_rule_hook(hook) -> bool:
    from .dfa import DirectFeedbackHead

    return isinstance(getattr(hook, "__self__", None), DirectFeedbackHead)


def _strip(module: nn.Module) -> None:
    """Remove rule hooks and rule tensors from one (already plain-typed) module, in place."""
    for hooks in (module._forward_pre_hooks, module._forward_hooks):
        for key in [k for k, h in hooks.items() if _is_rule_hook(h)]:
            del hooks[key]
    if type(module) in (nn.Linear, nn.Conv2d):
        for name in FEEDBACK_NAMES:
            module._parameters.pop(name, None)
            module._buffers.pop(name, None)


def to_plain(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with no trace of a learning rule: the module the user would have built.

    Feedback layers become ``nn.Linear``/``nn.Conv2d`` with the trained weight and bias
    (copies: training the result does not change ``model``), DFA's forward hooks are removed and
    feedback tensors on plain layers are dropped. The forward pass is unchanged, in train and
    in eval mode. A model that was never converted comes back as an equal copy.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"to_plain needs an nn.Module, got {type(model).__name__}")
    model = copy.deepcopy(model)
    if isinstance(model, FEEDBACK_LAYERS):
        model = _plain_layer(model)
    swapped: dict[int, nn.Module] = {}
    for name, child in list(model.named_modules(remove_duplicate=False))[1:]:
        if not isinstance(child, FEEDBACK_LAYERS):
            continue
        if id(child) not in swapped:  # a layer shared by several parents stays shared
            swapped[id(child)] = _plain_layer(child)
        parent_name, _, child_name = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child_name, swapped[id(child)])
    for module in model.modules():
        _strip(module)
    return model


def _rule_keys(model: nn.Module) -> set[str]:
    keys = set()
    for prefix, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, FEEDBACK_LAYERS) or type(module) in (nn.Linear, nn.Conv2d):
            dot = f"{prefix}." if prefix else ""
            keys.update(dot + name for name in FEEDBACK_NAMES)
    return keys


def plain_state_dict(model: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """``to_plain(model).state_dict()`` without copying the model (the tensors are shared).

    Loads with ``strict=True`` into the architecture ``model`` was converted from.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"plain_state_dict needs an nn.Module, got {type(model).__name__}")
    drop = _rule_keys(model)
    return OrderedDict((k, v) for k, v in model.state_dict().items() if k not in drop)


__all__ = ["FEEDBACK_NAMES", "plain_state_dict", "to_plain"]
