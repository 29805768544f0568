"""Feedback pathways: what a converted layer's backward pass uses in place of Wᵀ, and how it learns.

A :class:`~bioplausible.nn.layers.FeedbackLinear` / ``FeedbackConv2d`` keeps its forward pass and
weight gradient and delegates everything about its feedback to ``layer.pathway``, an object the
rule supplies (docs/contract.md §6). A pathway answers:

* :meth:`FeedbackPathway.backward_weight` — ``B_eff`` in W's layout, the tensor used for the
  input gradient (``∂/∂h = δ · B_eff``); the ``B_l`` of the equations is ``B_effᵀ``;
* :meth:`FeedbackPathway.stored` and :meth:`FeedbackPathway.feedback_grad` — when ``learn`` is
  set, the stored tensor and its gradient from the layer's raw outer product ``δᵀh`` (KP adds its
  decay here);
* ``record`` — keep ``last_input`` (h) and ``last_error`` (δ = ∂loss/∂a) of the last backward
  pass, for rules that form their own updates of B (regression onto a perturbation estimate).

Built-in pathways:

============================  ==========================================  =====================
pathway                       B_eff                                       rules
============================  ==========================================  =====================
:class:`FixedFeedback`        the stored ``layer.feedback``                FA, KP (learn), WM
:class:`SignFeedback`         sign(W) · c                                  uSF
:class:`SignRandomFeedback`   sign(W) ⊙ M · c, M = ``layer.feedback``      frSF, brSF (redraw)
:class:`DirectFeedback`       — (input cut; the DFA head sends e·B_l)      DFA (``nn.dfa``)
============================  ==========================================  =====================

Magnitudes are ``M = |z|·√(π/2)``, ``z ~ N(0, 1)`` (E[M] = 1); the scale ``c`` is 1 for
``scale="unit"`` and mean|W| for ``scale="mean_abs"`` (default: BP's magnitude per layer).
"""

from __future__ import annotations

import math

import torch

from ..errors import IncompatibleModelError

SCALES = ("unit", "mean_abs")
_SQRT_HALF_PI = math.sqrt(math.pi / 2)


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


def checked_feedback(layer) -> torch.Tensor:
    """``layer.feedback`` after checking that it exists and has the weight's shape."""
    b = layer.feedback
    name = layer.layer_name or type(layer).__name__
    if b is None:
        raise IncompatibleModelError(
            f"layer {name!r} has no feedback tensor; convert the model with a feedback rule "
            f"(fa, usf, brsf, frsf, kp, wm)")
    if b.shape != layer.weight.shape:
        raise IncompatibleModelError(
            f"layer {name!r}: feedback has shape {tuple(b.shape)} but must have its weight's "
            f"shape {tuple(layer.weight.shape)} (B is stored in W's layout)")
    return b


class FeedbackPathway:
    """Base pathway: the stored ``layer.feedback`` replaces W in the backward pass.

    Attributes: ``learn`` (B receives :meth:`feedback_grad` in the backward pass),
    ``learn_unused`` (also in a layer whose input needs no gradient), ``record`` (keep
    ``last_input``/``last_error``). One instance per layer when ``record`` is set.
    """

    kind = "fixed"
    learn = False
    learn_unused = False
    record = False

    def __init__(self) -> None:
        self.last_input: torch.Tensor | None = None
        self.last_error: torch.Tensor | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["last_input"] = state["last_error"] = None  # never copy activity of a batch
        return state

    def backward_weight(self, layer) -> torch.Tensor | None:
        """``B_eff`` in W's layout (``None``: this layer's input gradient is cut)."""
        return checked_feedback(layer)

    def current(self, layer) -> torch.Tensor | None:
        """``B_eff`` as it stands, without side effects (no redraw), for metrics."""
        return self.backward_weight(layer)

    def stored(self, layer) -> torch.Tensor | None:
        """The stored tensor that learns when ``learn`` is set."""
        return checked_feedback(layer)

    def feedback_grad(self, raw: torch.Tensor, feedback: torch.Tensor) -> torch.Tensor:
        """Gradient of the stored B from the layer's raw outer product ``δᵀh`` (W's layout)."""
        return raw.clone()

    def weight_decay(self) -> float:
        """λ added as ``λW`` to W's gradient in the backward pass (0: none)."""
        return 0.0

    def remember(self, x: torch.Tensor, grad_out: torch.Tensor) -> None:
        self.last_input, self.last_error = x, grad_out

    def forward(self, layer, x: torch.Tensor) -> torch.Tensor:
        need_x = x.requires_grad
        learn_b = self.learn and (need_x or self.learn_unused)
        if not (need_x or learn_b or self.record or self.weight_decay()):
            # first layer without decay in the backward: the weight gradient is the usual one
            return layer.plain_forward(x)
        backward_weight = self.backward_weight(layer) if need_x else None
        feedback = self.stored(layer) if learn_b else None
        return layer.feedback_function(x, feedback, backward_weight, self)

    def describe(self) -> str:
        return self.kind


class FixedFeedback(FeedbackPathway):
    """Fixed stored B (FA, WM); with ``learn=True`` B gets W's gradient (matched / KP, ``decay`` λ)."""

    def __init__(self, learn: bool = False, decay: float = 0.0, learn_unused: bool = False,
                 record: bool = False) -> None:
        super().__init__()
        self.learn, self.decay = bool(learn), float(decay)
        self.learn_unused, self.record = bool(learn_unused), bool(record)

    def feedback_grad(self, raw: torch.Tensor, feedback: torch.Tensor) -> torch.Tensor:
        return torch.add(raw, feedback, alpha=self.decay) if self.decay else raw.clone()

    def weight_decay(self) -> float:
        return self.decay if self.learn else 0.0


class SignFeedback(FeedbackPathway):
    """``B_eff = sign(W)·c`` (uSF); no stored tensor."""

    kind = "sign"

    def __init__(self, scale: str = "mean_abs") -> None:
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"feedback scale must be one of {SCALES}, got {scale!r}")
        self.scale = scale

    def _scaled(self, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.scale == "mean_abs":  # c = mean|W| without a |W| temporary
            b.mul_(torch.linalg.vector_norm(w, 1) / w.numel())
        return b

    def backward_weight(self, layer) -> torch.Tensor:
        w = layer.weight.detach()
        with torch.no_grad():
            return self._scaled(torch.sign(w), w)

    def stored(self, layer) -> None:
        return None


class SignRandomFeedback(SignFeedback):
    """``B_eff = sign(W) ⊙ M·c`` with magnitudes ``M = layer.feedback`` (frSF; brSF redraws M
    from ``streams`` at every forward call)."""

    kind = "sign_random"

    def __init__(self, scale: str = "mean_abs", redraw: bool = False, streams: Streams | None = None) -> None:
        super().__init__(scale)
        self.redraw, self.streams = bool(redraw), streams

    def backward_weight(self, layer) -> torch.Tensor:
        if self.redraw:
            m = checked_feedback(layer)
            draw_magnitudes(m, self.streams.get(m.device) if self.streams is not None else None)
        return self.current(layer)

    def current(self, layer) -> torch.Tensor:
        w = layer.weight.detach()
        m = checked_feedback(layer)
        with torch.no_grad():
            # sign(W) ⊙ M in one pass; an exactly-zero weight gets 0 as with sign(W)
            b = torch.copysign(m, w).mul_(w != 0) if not w.all() else torch.copysign(m, w)
            return self._scaled(b, w)


class DirectFeedback(FeedbackPathway):
    """A DFA tap: the layer's input is recorded and cut; the head sends ``e·B_l`` there."""

    kind = "direct"

    def __init__(self, head) -> None:
        super().__init__()
        self.head = head

    def backward_weight(self, layer) -> None:
        return None

    def stored(self, layer) -> None:
        return None

    def forward(self, layer, x: torch.Tensor) -> torch.Tensor:
        return self.head.layer_forward(layer, x)


__all__ = ["SCALES", "DirectFeedback", "FeedbackPathway", "FixedFeedback", "SignFeedback",
           "SignRandomFeedback", "Streams", "checked_feedback", "draw_magnitudes"]
