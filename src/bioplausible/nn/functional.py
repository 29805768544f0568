"""The two autograd Functions of the feedback pathway (public ``torch.autograd.Function`` API).

For a layer ``a = W h + b`` the backward pass returns

* ``∂/∂h = δ · B_eff``       — the *feedback* signal (B_eff in W's layout, so for Linear this is
  ``δ @ B_eff`` = ``B_l δ`` of the equations with ``B_l = B_effᵀ``); BP would use ``W`` here;
* ``∂/∂W = δᵀ h (+ λ W)``     — the usual weight gradient, plus the pathway's
  :meth:`~bioplausible.nn.pathway.FeedbackPathway.weight_decay` (KP with its decay in the backward);
* ``∂/∂b = Σ_batch δ``;
* ``∂/∂B``                    — only when the pathway learns its stored feedback: whatever
  :meth:`~bioplausible.nn.pathway.FeedbackPathway.feedback_grad` makes of the raw ``δᵀh``
  (the matched rule / Kolen-Pollack: ``δᵀh + λB``).

The pathway (a plain Python object, not a tensor) is passed through ``apply``; when its
``record`` flag is set the backward pass hands it the layer's input and error signal.

For Conv2d the feedback signal is the transposed convolution with ``B_eff`` as kernel
(:func:`torch.nn.grad.conv2d_input`) and the weight gradient is
:func:`torch.nn.grad.conv2d_weight`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch.autograd import Function
from torch.nn.grad import conv2d_input, conv2d_weight


def _common_dtype(grad_out, x, weight):
    """Under autocast the forward ran in low precision; the backward runs in W's dtype."""
    if grad_out.dtype != weight.dtype:
        grad_out = grad_out.to(weight.dtype)
    if x.dtype != weight.dtype:
        x = x.to(weight.dtype)
    return grad_out, x


def _weight_and_feedback_grads(raw, weight, feedback, pathway, need_w, need_b):
    """Split the raw outer product ``δᵀh`` into W's and B's gradients (see module docstring)."""
    grad_feedback = pathway.feedback_grad(raw, feedback) if need_b else None
    decay = pathway.weight_decay() if pathway is not None else 0.0
    grad_weight = None
    if need_w:
        grad_weight = raw.add_(weight, alpha=decay) if decay else raw
    return grad_weight, grad_feedback


class LinearFeedbackFunction(Function):
    """``F.linear`` whose input gradient uses ``backward_weight`` instead of ``weight``.

    ``feedback`` is passed only when B is learned (it then receives a gradient);
    ``backward_weight`` is the tensor used in place of W (``None`` when the input needs no
    gradient). Both are in W's layout ``(out_features, in_features)``. ``pathway``: the layer's
    :class:`~bioplausible.nn.pathway.FeedbackPathway`.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, feedback, backward_weight, pathway):
        ctx.save_for_backward(x, weight, feedback, backward_weight)
        ctx.pathway = pathway
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, feedback, backward_weight = ctx.saved_tensors
        need_x, need_w, need_bias, need_b = ctx.needs_input_grad[:4]
        grad_out, x = _common_dtype(grad_out, x, weight)
        if ctx.pathway is not None and ctx.pathway.record:
            ctx.pathway.remember(x, grad_out)
        grad_x = grad_w = grad_bias = grad_b = None
        if need_x:
            grad_x = grad_out.matmul(backward_weight)
        if grad_out.dim() != 2:  # (batch, ..., features): flatten the leading dimensions
            grad_out, x = grad_out.reshape(-1, grad_out.shape[-1]), x.reshape(-1, x.shape[-1])
        if need_w or need_b:
            grad_w, grad_b = _weight_and_feedback_grads(grad_out.t().mm(x), weight, feedback,
                                                        ctx.pathway, need_w, need_b)
        if need_bias:
            grad_bias = grad_out.sum(0)
        return grad_x, grad_w, grad_bias, grad_b, None, None


class Conv2dFeedbackFunction(Function):
    """``F.conv2d`` (numeric zero padding) whose input gradient uses ``backward_weight``."""

    @staticmethod
    def forward(ctx, x, weight, bias, feedback, backward_weight, pathway,
                stride, padding, dilation, groups):
        ctx.save_for_backward(x, weight, feedback, backward_weight)
        ctx.pathway = pathway
        ctx.conv = (stride, padding, dilation, groups)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, feedback, backward_weight = ctx.saved_tensors
        need_x, need_w, need_bias, need_b = ctx.needs_input_grad[:4]
        grad_out, x = _common_dtype(grad_out, x, weight)
        if ctx.pathway is not None and ctx.pathway.record:
            ctx.pathway.remember(x, grad_out)
        grad_x = grad_w = grad_bias = grad_b = None
        if need_x:
            grad_x = conv2d_input(x.shape, backward_weight, grad_out, *ctx.conv)
        if need_w or need_b:
            raw = conv2d_weight(x, weight.shape, grad_out, *ctx.conv)
            grad_w, grad_b = _weight_and_feedback_grads(raw, weight, feedback, ctx.pathway,
                                                        need_w, need_b)
        if need_bias:
            grad_bias = grad_out.sum((0, 2, 3))
        return grad_x, grad_w, grad_bias, grad_b, None, None, None, None, None, None


__all__ = ["Conv2dFeedbackFunction", "LinearFeedbackFunction"]
