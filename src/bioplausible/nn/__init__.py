"""Layers whose backward pass uses a feedback tensor instead of the weight transpose.

``bioplausible.convert(model, rule)`` (a rule's ``prepare``) swaps every ``nn.Linear``/``nn.Conv2d``
for :class:`FeedbackLinear` / :class:`FeedbackConv2d` (:func:`swap_layers`); the user's loop stays ``loss.backward(); opt.step()`` (plus
``rule.after_step(model)`` for the weight mirror)::

    import torch, bioplausible as bp
    rule = bp.make("kp", decay=1e-3)
    model = bp.convert(bp.build_model("mlp:784-500-10", activation="sigmoid"), rule)
    opt = torch.optim.SGD(rule.param_groups(model, lr=0.1))
    loss = torch.nn.functional.mse_loss(model(torch.rand(8, 784)), torch.rand(8, 10))
    loss.backward(); opt.step(); rule.after_step(model)

Inside :func:`exact_backward` every feedback layer and DFA tap backpropagates exactly.
"""

from ..core.context import exact_backward, exact_backward_enabled
from .convert import feedback_layers, swap_layers, to_feedback_layer
from .dfa import DirectFeedbackFunction, DirectFeedbackHead
from .functional import Conv2dFeedbackFunction, LinearFeedbackFunction
from .layers import FeedbackConv2d, FeedbackLinear, init_feedback
from .mirror import mirror_update
from .pathway import (
    DirectFeedback,
    FeedbackPathway,
    FixedFeedback,
    SignFeedback,
    SignRandomFeedback,
)
from .plain import plain_state_dict, to_plain

__all__ = [
    "Conv2dFeedbackFunction",
    "DirectFeedback",
    "DirectFeedbackFunction",
    "DirectFeedbackHead",
    "FeedbackConv2d",
    "FeedbackLinear",
    "FeedbackPathway",
    "FixedFeedback",
    "LinearFeedbackFunction",
    "SignFeedback",
    "SignRandomFeedback",
    "exact_backward",
    "exact_backward_enabled",
    "feedback_layers",
    "init_feedback",
    "mirror_update",
    "plain_state_dict",
    "swap_layers",
    "to_feedback_layer",
    "to_plain",
]
