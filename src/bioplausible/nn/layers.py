"""``FeedbackLinear`` and ``FeedbackConv2d``: drop-in layers whose backward pass uses feedback.

Each layer keeps ``nn.Linear``/``nn.Conv2d``'s forward and weight gradient and replaces ``Wᵀ`` in
the input gradient by a feedback tensor (design.md §2). The stored ``feedback`` parameter has
the **layout of** ``weight`` — the spec's ``B_l`` is ``feedback.T`` — and the tensor actually
used in the backward pass (``B_eff``) is computed at every forward call from ``feedback``,
``weight`` and the layer's :class:`FeedbackSpec`:

============  ==========================================  ======================================
kind          B_eff                                       rule
============  ==========================================  ======================================
fixed         feedback                                    FA (Lillicrap et al. 2016), KP, WM
sign          sign(W) · c                                 uSF (Liao, Leibo & Poggio 2016)
sign_random   sign(W) ⊙ M · c,  M = feedback ≥ 0           frSF (M fixed), brSF (M redrawn each
                                                          batch); Liao et al. 2016
direct        — (input cut; DFA signal from the head)      DFA (Nøkland 2016), see ``nn.dfa``
============  ==========================================  ======================================

Magnitudes are ``M = |z|·√(π/2)``, ``z ~ N(0, 1)`` (so E[M] = 1). The scale ``c`` is 1 for
``scale="unit"`` (the papers' feedback, which multiplies every backward signal by ≈ 1/mean|W|
per layer and needs batch normalisation or tiny learning rates in deep nets) and ``mean|W|``
for ``scale="mean_abs"`` (default): the same direction per layer, with BP's magnitude.

Inside :func:`~bioplausible.nn.exact_backward` (and under ``torch.no_grad``) the layers run the
plain ``F.linear``/``F.conv2d``, so autograd computes exact BP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import IncompatibleModelError
from .context import exact_backward_enabled
from .functional import Conv2dFeedbackFunction, LinearFeedbackFunction

KINDS = ("fixed", "sign", "sign_random", "direct")
SCALES = ("unit", "mean_abs")
FEEDBACK_INITS = ("default", "weight_std", "weight")
_SQRT_HALF_PI = math.sqrt(math.pi / 2)


@dataclass(frozen=True)
class FeedbackSpec:
    """How a layer builds and learns its feedback (set by the rule at ``prepare``).

    ``learn``: B receives W's gradient (matched / Kolen-Pollack); ``decay``: KP's λ, added as
    ``λW`` to W's gradient and ``λB`` to B's; ``learn_unused``: also learn B in a forward call
    whose input needs no gradient (B is then never used, e.g. the first layer's);
    ``redraw``: brSF's per-batch magnitudes.
    """

    kind: str = "fixed"
    scale: str = "mean_abs"
    redraw: bool = False
    learn: bool = False
    decay: float = 0.0
    learn_unused: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"feedback kind must be one of {KINDS}, got {self.kind!r}")
        if self.scale not in SCALES:
            raise ValueError(f"feedback scale must be one of {SCALES}, got {self.scale!r}")


class Streams:
    """Per-device ``torch.Generator``s seeded from one integer (deep-copyable, picklable)."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self.generators: dict[str, torch.Generator] = {}

    def get(self, device: torch.device | str) -> torch.Generator:
        key = str(torch.device(device))
        if key not in self.generators:
            g = torch.Generator(device=device)
            g.manual_seed(self.seed)
            self.generators[key] = g
        return self.generators[key]


def draw_magnitudes(tensor: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill ``tensor`` in place with ``|z|·√(π/2)``, ``z ~ N(0, 1)`` (mean 1)."""
    with torch.no_grad():
        return tensor.normal_(0.0, 1.0, generator=generator).abs_().mul_(_SQRT_HALF_PI)


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
        self.feedback_spec = FeedbackSpec()
        self.feedback_streams: Streams | None = None
        self.dfa_head = None  # set by nn.dfa for kind "direct"
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

    def _name(self) -> str:
        return self.layer_name or type(self).__name__

    def checked_feedback(self) -> torch.Tensor:
        """The stored feedback, after checking that it exists and has the weight's shape."""
        b = self.feedback
        if b is None:
            raise IncompatibleModelError(
                f"layer {self._name()!r} has no feedback tensor; convert the model with a "
                f"feedback rule (fa, usf, brsf, frsf, kp, wm)")
        if b.shape != self.weight.shape:
            raise IncompatibleModelError(
                f"layer {self._name()!r}: feedback has shape {tuple(b.shape)} but must have its "
                f"weight's shape {tuple(self.weight.shape)} (B is stored in W's layout)")
        return b

    def effective_feedback(self, redraw: bool = False) -> torch.Tensor | None:
        """``B_eff`` in W's layout, the tensor that replaces W in the backward pass.

        ``redraw`` draws fresh sign-random magnitudes first (brSF, once per forward call).
        Returns ``None`` for DFA layers, whose feedback is not in W's layout.
        """
        spec = self.feedback_spec
        if spec.kind == "direct":
            return None
        if spec.kind == "fixed":
            return self.checked_feedback()
        w = self.weight.detach()
        with torch.no_grad():
            if spec.kind == "sign_random":
                m = self.checked_feedback()
                if redraw:
                    streams = self.feedback_streams
                    draw_magnitudes(m, streams.get(m.device) if streams is not None else None)
                # sign(W) ⊙ M in one pass; an exactly-zero weight gets 0 as with sign(W)
                b = torch.copysign(m, w).mul_(w != 0) if not w.all() else torch.copysign(m, w)
            else:
                b = torch.sign(w)
            if spec.scale == "mean_abs":  # c = mean|W| without a |W| temporary
                b.mul_(torch.linalg.vector_norm(w, 1) / w.numel())
        return b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() or exact_backward_enabled():
            return self.plain_forward(x)
        spec = self.feedback_spec
        if spec.kind == "direct":
            head = self.dfa_head
            return head.layer_forward(self, x) if head is not None else self.plain_forward(x)
        need_x = x.requires_grad
        if not (need_x or spec.learn):
            return self.plain_forward(x)  # first layer: the weight gradient is the usual one
        backward_weight = self.effective_feedback(redraw=spec.redraw) if need_x else None
        learn_b = spec.learn and (need_x or spec.learn_unused)
        feedback = self.checked_feedback() if learn_b else None
        return self._feedback_function(x, feedback, backward_weight, spec.decay if spec.learn else 0.0)

    def extra_repr(self) -> str:  # type: ignore[override]
        return f"{super().extra_repr()}, feedback={self.feedback_spec.kind}"  # type: ignore[misc]


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

    def _feedback_function(self, x, feedback, backward_weight, decay):
        return LinearFeedbackFunction.apply(x, self.weight, self.bias, feedback, backward_weight, decay)


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

    def _feedback_function(self, x, feedback, backward_weight, decay):
        return Conv2dFeedbackFunction.apply(self._pad(x), self.weight, self.bias, feedback,
                                            backward_weight, decay, self.stride,
                                            self.conv_padding, self.dilation, self.groups)


FEEDBACK_LAYERS = (FeedbackLinear, FeedbackConv2d)

__all__ = [
    "FEEDBACK_INITS",
    "FEEDBACK_LAYERS",
    "KINDS",
    "SCALES",
    "FeedbackConv2d",
    "FeedbackLinear",
    "FeedbackSpec",
    "Streams",
    "draw_magnitudes",
    "init_feedback",
]
