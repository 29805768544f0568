"""``FeedbackLinear`` and ``FeedbackConv2d``: drop-in layers whose backward pass uses feedback.

Each layer keeps ``nn.Linear``/``nn.Conv2d``'s forward and weight gradient and hands its
backward path to ``layer.pathway``, a :class:`~bioplausible.nn.pathway.FeedbackPathway` the rule
supplies (what B is, how the input gradient is formed from it, how B learns; see
:mod:`bioplausible.nn.pathway`). A stored ``feedback`` parameter, when the pathway uses one, has
the **layout of** ``weight`` — the ``B_l`` of the equations (docs/notation.md) is ``feedback.T``.

Inside :func:`~bioplausible.nn.exact_backward` (and under ``torch.no_grad``) the layers run the
plain ``F.linear``/``F.conv2d``, so autograd computes exact BP.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import IncompatibleModelError
from .context import exact_backward_enabled
from .functional import Conv2dFeedbackFunction, LinearFeedbackFunction
from .pathway import FeedbackPathway, FixedFeedback, Streams, checked_feedback, draw_magnitudes

FEEDBACK_INITS = ("default", "weight_std", "weight")


def init_feedback(layer: nn.Module, how: str = "default",
                  generator: torch.Generator | None = None) -> None:
    """Initialise ``layer.feedback`` (W's layout) in place.

    ``default``: U(−1/√fan_in, 1/√fan_in), the bound of PyTorch's default weight init for the
    same layer (kaiming-uniform with a = √5); ``weight_std``: N(0, std(W)²), matching a custom
    forward init; ``weight``: a copy of W (symmetric start, so the first step equals BP).
    """
    w, b = layer.weight, layer.feedback
    with torch.no_grad():
        if how == "default":
            bound = 1.0 / math.sqrt(max(w[0].numel(), 1))
            b.uniform_(-bound, bound, generator=generator)
        elif how == "weight_std":
            b.normal_(0.0, float(w.std()) if w.numel() > 1 else 1.0, generator=generator)
        elif how == "weight":
            b.copy_(w)
        else:
            raise ValueError(f"feedback_init must be one of {FEEDBACK_INITS}, got {how!r}")


class _FeedbackMixin:
    """State and behaviour shared by the Linear and Conv2d feedback layers."""

    weight: nn.Parameter
    bias: nn.Parameter | None

    def _init_feedback(self, feedback: bool) -> None:
        self.pathway: FeedbackPathway = FixedFeedback()
        self.layer_name = ""
        self.register_parameter("direct_feedback", None)
        self.register_parameter("feedback", None)
        if feedback:
            self.add_feedback()
        self.register_load_state_dict_pre_hook(_check_loaded_feedback)

    def add_feedback(self, generator: torch.Generator | None = None) -> None:
        """(Re)create ``feedback`` like ``weight`` with the default init (not trained by default)."""
        self.feedback = nn.Parameter(torch.empty_like(self.weight), requires_grad=False)
        if self.weight.device.type != "meta":
            init_feedback(self, "default", generator)

    def checked_feedback(self) -> torch.Tensor:
        """The stored feedback, after checking that it exists and has the weight's shape."""
        return checked_feedback(self)

    def effective_feedback(self) -> torch.Tensor | None:
        """``B_eff`` in W's layout as it stands (``None`` for DFA taps), for metrics."""
        return self.pathway.current(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() or exact_backward_enabled():
            return self.plain_forward(x)
        return self.pathway.forward(self, x)

    def extra_repr(self) -> str:  # type: ignore[override]
        return f"{super().extra_repr()}, feedback={self.pathway.describe()}"  # type: ignore[misc]


def _check_loaded_feedback(module, state_dict, prefix, local_metadata, strict, missing_keys,
                           unexpected_keys, error_msgs) -> None:
    """Load pre-hook: name the layer on a feedback shape mismatch; materialise DFA matrices."""
    name = module.layer_name or prefix.rstrip(".") or type(module).__name__
    fb = state_dict.get(prefix + "feedback")
    if fb is not None and module.feedback is not None and fb.shape != module.weight.shape:
        raise IncompatibleModelError(
            f"layer {name!r}: loaded feedback has shape {tuple(fb.shape)} but the layer's weight "
            f"has shape {tuple(module.weight.shape)}")
    direct = state_dict.get(prefix + "direct_feedback")
    if direct is not None:
        if direct.dim() != 2 or (isinstance(module, nn.Linear) and direct.shape[1] != module.in_features):
            raise IncompatibleModelError(
                f"layer {name!r}: loaded direct_feedback has shape {tuple(direct.shape)}; expected "
                f"(network outputs, flattened input size of the layer)")
        current = module.direct_feedback
        if current is None or current.shape != direct.shape:
            module.direct_feedback = nn.Parameter(
                torch.empty(direct.shape, device=module.weight.device, dtype=module.weight.dtype),
                requires_grad=False)


class FeedbackLinear(_FeedbackMixin, nn.Linear):
    """``nn.Linear`` whose input gradient is ``δ @ B_eff`` (B_eff in W's layout)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device=None, dtype=None, *, feedback: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_feedback(feedback)

    def plain_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def feedback_function(self, x, feedback, backward_weight, pathway):
        return LinearFeedbackFunction.apply(x, self.weight, self.bias, feedback, backward_weight, pathway)


def _numeric_padding(padding, kernel_size, dilation) -> tuple[int, int]:
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        total = [d * (k - 1) for d, k in zip(dilation, kernel_size)]
        if any(t % 2 for t in total):
            raise IncompatibleModelError(
                f"padding='same' with kernel {tuple(kernel_size)} and dilation {tuple(dilation)} "
                f"pads asymmetrically, which FeedbackConv2d does not support; pad explicitly")
        return (total[0] // 2, total[1] // 2)
    return (int(padding[0]), int(padding[1]))


class FeedbackConv2d(_FeedbackMixin, nn.Conv2d):
    """``nn.Conv2d`` whose input gradient is the transposed convolution with ``B_eff``.

    Non-zero padding modes pad the input first (ordinary autograd) and convolve unpadded.
    ``input_hw`` records the spatial size of the last input (the weight mirror uses it).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device=None, dtype=None, *, feedback: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         bias, padding_mode, device=device, dtype=dtype)
        ph, pw = _numeric_padding(self.padding, self.kernel_size, self.dilation)
        self.pre_pad = (pw, pw, ph, ph) if padding_mode != "zeros" and (ph or pw) else None
        self.conv_padding = (0, 0) if self.pre_pad else (ph, pw)
        self.input_hw: tuple[int, int] | None = None
        self._init_feedback(feedback)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.pre_pad, mode=self.padding_mode) if self.pre_pad else x

    def plain_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self._pad(x), self.weight, self.bias, self.stride, self.conv_padding,
                        self.dilation, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.input_hw = (int(x.shape[-2]), int(x.shape[-1]))
        if x.dim() == 3:  # unbatched input
            return super().forward(x.unsqueeze(0)).squeeze(0)
        return super().forward(x)

    def feedback_function(self, x, feedback, backward_weight, pathway):
        return Conv2dFeedbackFunction.apply(self._pad(x), self.weight, self.bias, feedback,
                                            backward_weight, pathway, self.stride,
                                            self.conv_padding, self.dilation, self.groups)


FEEDBACK_LAYERS = (FeedbackLinear, FeedbackConv2d)

__all__ = [
    "FEEDBACK_INITS",
    "FEEDBACK_LAYERS",
    "FeedbackConv2d",
    "FeedbackLinear",
    "Streams",
    "draw_magnitudes",
    "init_feedback",
]
