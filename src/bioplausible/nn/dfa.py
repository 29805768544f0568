"""Direct feedback alignment without a per-layer chain (Nøkland 2016).

DFA sends the output error ``e = ∂loss/∂output`` straight to every hidden layer:
``δ_l = (B_l e) ⊙ f′(a_l)`` with fixed random ``B_l``. Here:

* **taps** — every feedback layer whose input ``h`` requires a gradient records ``h`` as a
  root and computes on ``h.detach()``: the graph is cut there, so no error travels from layer
  to layer;
* **head** — a forward hook on the converted model passes its output through
  :class:`DirectFeedbackFunction`. In the backward pass it receives ``e`` once, computes every
  layer's signal with **one GEMM** ``e @ [B_1 … B_L]`` (each ``B_l`` stored as
  ``direct_feedback`` of shape ``(n_out, n_l)``, ``n_l`` = the layer input's flattened size,
  so conv layers get feedback in their flattened activation shape) and returns the slices as
  the gradients of the roots, so autograd applies all of them in the same backward pass (one
  multi-root backward). ``loss.backward()`` is all a training loop needs.

Because the signal enters at the *input* of the next parametric layer, autograd applies the
exact local Jacobian of whatever lies in between (``⊙ f′(a_l)`` of the activation, max-pool
routing, flatten, dropout masks) — for an MLP this is exactly Nøkland's ``(B_l e) ⊙ f′(a_l)``.

Output layer (``output_layer``):

* ``"bp"`` (default): ``e`` flows back through the modules after the last layer, so the output
  layer is trained by its true gradient ``δ_L = ∂loss/∂a_L``;
* ``"dfa"``: ``e`` is injected directly at the last layer's output ``a_L`` (``δ_L = e``, i.e.
  ``B_L = I``), skipping the output nonlinearity's derivative. Identical to ``"bp"`` when the
  last layer is the model output (identity output activation, the library's MLPs); they
  differ with e.g. a sigmoid output. The last *hidden* layer always gets ``B_{L−1} e``.

``B_l`` is drawn U(−1/√n_l, 1/√n_l) — PyTorch's default init of a Linear(n_l → n_out) — from a
generator seeded by the rule's seed. **Convolution taps** (``conv_scale``): a conv weight's
gradient sums ``δ·h`` over every output position while every position's DFA signal comes from the
same ``e``, so with that init a conv layer's DFA update is 10-30× BP's (LeNet and the NP CNN at
init, ``benchmarks/results/np_conv_scale.md``). ``conv_scale="sqrt_positions"`` (the default)
divides the drawn ``B_l`` of a tap whose layer is a convolution by ``√P``, ``P = H·W`` the spatial
positions of that layer's input; ``"positions"`` divides by ``P``; ``"none"`` keeps the plain
draw. Linear taps are never scaled. Its size depends on activation shapes, so it is created
when the rule is prepared with an ``example`` input (one forward pass that only records shapes;
the trainer always passes one), otherwise at the first forward pass; ``trainable=True`` makes
the matrices parameters with ``requires_grad`` for rules that learn them (their ``.grad`` is the
rule's to write). ``load_state_dict`` recreates them with the loaded shape.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.autograd import Function

from ..errors import ConfigError, IncompatibleModelError
from .context import exact_backward_enabled
from .pathway import DirectFeedback, Streams

OUTPUT_POLICIES = ("bp", "dfa")
CONV_SCALES = ("sqrt_positions", "positions", "none")


class DirectFeedbackFunction(Function):
    """Identity on the model output; backward: ``e`` → (``e`` or ``None``, ``e @ B_cat`` split)."""

    @staticmethod
    def forward(ctx, b_cat, inject_at_last, output, last, *roots):
        ctx.save_for_backward(b_cat)
        ctx.inject_at_last = inject_at_last
        ctx.shapes = [r.shape for r in roots]
        ctx.sizes = [math.prod(r.shape[1:]) for r in roots]
        return output.view_as(output)

    @staticmethod
    def backward(ctx, e):
        (b_cat,) = ctx.saved_tensors
        grads = []
        if ctx.sizes:
            e_flat = e.reshape(e.shape[0], -1)
            if e_flat.dtype != b_cat.dtype:  # autocast: the signal is computed in B's dtype
                e_flat = e_flat.to(b_cat.dtype)
            signal = e_flat.mm(b_cat)  # one GEMM for every layer
            parts = signal.split(ctx.sizes, dim=1) if len(ctx.sizes) > 1 else (signal,)
            grads = [p.reshape(s) for p, s in zip(parts, ctx.shapes)]
        if ctx.inject_at_last:
            return (None, None, None, e, *grads)
        return (None, None, e, None, *grads)


class DirectFeedbackHead:
    """The taps' recorder and the model-output hook of a DFA-converted model."""

    def __init__(self, output_layer: str = "bp", seed: int = 0, trainable: bool = False,
                 conv_scale: str = "sqrt_positions") -> None:
        if output_layer not in OUTPUT_POLICIES:
            raise ConfigError(
                f"unknown DFA output_layer {output_layer!r}; accepted values: "
                f"{', '.join(repr(p) for p in OUTPUT_POLICIES)}")
        if conv_scale not in CONV_SCALES:
            raise ConfigError(
                f"unknown DFA conv_scale {conv_scale!r}; accepted values: "
                f"{', '.join(repr(p) for p in CONV_SCALES)}")
        self.output_layer = output_layer
        self.conv_scale = conv_scale
        self.trainable = bool(trainable)
        self.discovering = False
        self.streams = Streams(seed)
        self._taps: list[tuple[nn.Module, torch.Tensor]] = []
        self._last: tuple[nn.Module, torch.Tensor] | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_taps"], state["_last"] = [], None  # never copy graph tensors
        return state

    # ---------------------------------------------------------------- hooks
    def layer_forward(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Forward of a DFA layer: record and cut its input, remember its output."""
        if x.requires_grad:
            self._taps.append((layer, x))
            x = x.detach()
        out = layer.plain_forward(x)
        self._last = (layer, out)
        return out

    def pre_hook(self, module: nn.Module, args) -> None:
        self._taps, self._last = [], None

    def hook(self, module: nn.Module, args, output):
        taps, last = self._taps, self._last
        self._taps, self._last = [], None
        if exact_backward_enabled() or not torch.is_grad_enabled():
            return None
        inject_at_last = self.output_layer == "dfa"
        if not taps and not inject_at_last:
            return None
        if not isinstance(output, torch.Tensor) or output.dim() < 1:
            raise IncompatibleModelError(
                f"DFA needs {type(module).__name__}'s forward to return one batched tensor, "
                f"got {type(output).__name__}")
        if self.discovering:  # prepare-time pass: create every B_l, build no graph
            n_out = math.prod(output.shape[1:])
            for layer, root in taps:
                self._feedback_for(layer, root, n_out)
            return None
        last_out = None
        if inject_at_last:
            if last is None or last[1].shape != output.shape:
                name = last[0].layer_name if last is not None else "?"
                raise IncompatibleModelError(
                    f"output_layer='dfa' injects the error at the last layer {name!r}, whose "
                    f"output shape must equal the model output's {tuple(output.shape)}; "
                    f"use output_layer='bp'")
            last_out = last[1]
        n_out = math.prod(output.shape[1:])
        blocks = [self._feedback_for(layer, root, n_out) for layer, root in taps]
        b_cat = None
        if blocks:
            b_cat = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)
        return DirectFeedbackFunction.apply(b_cat, inject_at_last, output, last_out,
                                            *(root for _, root in taps))

    def _feedback_for(self, layer: nn.Module, root: torch.Tensor, n_out: int) -> torch.Tensor:
        n_in = math.prod(root.shape[1:])
        b = layer.direct_feedback
        if b is None:
            w = layer.weight
            bound = 1.0 / math.sqrt(n_in)
            data = torch.empty(n_out, n_in, device=w.device, dtype=w.dtype)
            data.uniform_(-bound, bound, generator=self.streams.get(w.device))
            if self.conv_scale != "none" and isinstance(layer, nn.Conv2d) and root.dim() == 4:
                positions = int(root.shape[-2]) * int(root.shape[-1])
                data.div_(positions if self.conv_scale == "positions" else math.sqrt(positions))
            b = layer.direct_feedback = nn.Parameter(data, requires_grad=self.trainable)
        elif b.shape != (n_out, n_in):
            raise IncompatibleModelError(
                f"layer {layer.layer_name!r}: direct_feedback has shape {tuple(b.shape)} but the "
                f"network has {n_out} outputs and the layer's input has {n_in} values per sample; "
                f"expected ({n_out}, {n_in})")
        return b


def attach_direct_feedback(model: nn.Module, layers, output_layer: str = "bp", seed: int = 0,
                           example: torch.Tensor | None = None, trainable: bool = False,
                           conv_scale: str = "sqrt_positions") -> DirectFeedbackHead:
    """Turn the feedback ``layers`` of ``model`` into DFA taps and hook the model output
    (``conv_scale``: the scaling of convolution taps' ``B_l``, see the module docstring).

    With ``example`` (an input batch) every ``B_l`` is created now, from one forward pass in
    eval mode that records the taps' shapes (no BatchNorm statistics change, nothing learns).
    """
    head = DirectFeedbackHead(output_layer, seed, trainable, conv_scale)
    for layer in layers:
        layer.pathway = DirectFeedback(head)
    model.register_forward_pre_hook(head.pre_hook)
    model.register_forward_hook(head.hook)
    if example is not None:
        create_direct_feedback(model, head, example)
    return head


def create_direct_feedback(model: nn.Module, head: DirectFeedbackHead, example: torch.Tensor) -> None:
    """Create the DFA matrices of ``model`` from one shape-recording forward pass."""
    was_training = model.training
    head.discovering = True
    model.eval()
    try:
        with torch.enable_grad():
            model(example[:1] if example.dim() > 0 and example.shape[0] > 1 else example)
    finally:
        head.discovering = False
        model.train(was_training)
        model.zero_grad(set_to_none=True)


__all__ = ["CONV_SCALES", "OUTPUT_POLICIES", "DirectFeedbackFunction", "DirectFeedbackHead",
           "attach_direct_feedback", "create_direct_feedback"]
