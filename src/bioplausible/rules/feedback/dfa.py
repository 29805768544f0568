"""Direct feedback alignment (Nøkland 2016, "Direct feedback alignment provides learning in deep
neural networks").

``δ_l = (B_l e) ⊙ f′(a_l)`` for every hidden layer, with the output error ``e = ∂loss/∂output``
and fixed random ``B_l`` (stored as ``direct_feedback``, shape ``(n_out, n_l)``). Taps cut the
graph at every layer input, the error is computed once, one GEMM ``e @ [B_1 … B_L]`` gives every
layer's signal and one backward pass applies them all (:mod:`bioplausible.nn.dfa`); the
training loop stays ``loss.backward(); opt.step()``.

Option ``output_layer``: ``"bp"`` (default; the output layer is trained by its true gradient)
or ``"dfa"`` (``e`` injected directly at the last layer's output, ``δ_L = e``); they differ only
when modules such as an output nonlinearity follow the last layer.

Option ``conv_scale`` (convolution taps only; MLPs are unaffected): the random ``B_l`` of a tap
whose layer is a convolution, drawn U(±1/√n_l), is divided by ``√P`` (``"sqrt_positions"``,
default), ``P`` (``"positions"``) or not at all (``"none"``: the unscaled draw of earlier
versions), ``P = H·W`` the spatial positions of the layer's input. A conv weight's gradient sums
``δ·h`` over every position while every position's signal ``B_l e`` comes from the same ``e``:
unscaled, LeNet's conv updates at init are ~10-20× BP's and DFA needed a learning rate ~10×
lower than BP's; with ``√P`` they are within ~2-3× of BP's (``benchmarks/np_conv_scale.py``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ...errors import ConfigError
from ...nn.convert import feedback_layers, swap_layers
from ...nn.dfa import CONV_SCALES, OUTPUT_POLICIES, attach_direct_feedback
from ..._registry import register
from ...core.rule import FeedbackPair, Rule


@register("dfa")
class DirectFeedbackAlignment(Rule):
    """Direct feedback alignment (DFA): every hidden layer receives the output error directly.

    ``δ_l = (B_l e) ⊙ f′(a_l)`` with ``e = ∂loss/∂output`` and fixed random ``B_l`` (stored
    ``(n_out, n_l)``) for every hidden layer (Nøkland 2016). One GEMM forms every
    layer's signal and one backward pass applies them.

    Options: ``output_layer`` — ``"bp"`` (the output layer gets its true gradient) or ``"dfa"``
    (``δ_L = e``); ``conv_scale`` — a convolution tap's random ``B_l`` divided by √P
    (``"sqrt_positions"``), P (``"positions"``) or 1 (``"none"``), P the input's spatial
    positions, since a conv update sums e·B over every position.

    Models: any model of ``nn.Linear`` / ``nn.Conv2d`` layers (MLPs, CNNs, the CIFAR ResNets,
    your own); the signal enters at each layer's input.
    """

    family = "feedback"
    paper = "Nøkland 2016"
    summary = "direct random feedback of the output error: δ_l = (B_l e) ⊙ f′(a_l)"
    defaults: ClassVar[dict[str, Any]] = {"output_layer": "bp", "conv_scale": "sqrt_positions"}

    def validate(self) -> None:
        policy = self.config["output_layer"]
        if policy not in OUTPUT_POLICIES:
            raise ConfigError(
                f"rule 'dfa': unknown output_layer {policy!r}; accepted values: "
                f"{', '.join(repr(p) for p in OUTPUT_POLICIES)} ('bp': the output layer is "
                f"trained by its true gradient; 'dfa': by the output error e directly)")
        scale = self.config["conv_scale"]
        if scale not in CONV_SCALES:
            raise ConfigError(
                f"rule 'dfa': unknown conv_scale {scale!r}; accepted values: "
                f"{', '.join(repr(p) for p in CONV_SCALES)} (how convolution taps' random B_l are "
                f"scaled: by 1/sqrt(positions), 1/positions, or not at all)")

    def prepare(self, model: nn.Module, example: torch.Tensor | None = None) -> nn.Module:
        """Convert the layers to DFA taps; with ``example`` every B_l is created here."""
        model = swap_layers(model, feedback=False)
        layers = [layer for _, layer in feedback_layers(model)]
        attach_direct_feedback(model, layers, self.config["output_layer"], seed=self.seed + 7_877,
                               example=example, conv_scale=self.config["conv_scale"])
        return model

    def feedback_pairs(self, model: nn.Module) -> list[FeedbackPair]:
        """DFA's ``B_l`` has shape ``(n_out, n_l)``, not W's: pairs carry ``feedback=None``."""
        return [FeedbackPair(name, layer.weight, None) for name, layer in feedback_layers(model)]

    def direct_feedback(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The created direct feedback matrices ``B_l`` by layer name (after a forward pass)."""
        return {name: layer.direct_feedback for name, layer in feedback_layers(model)
                if layer.direct_feedback is not None}


__all__ = ["DirectFeedbackAlignment"]
