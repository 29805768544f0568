"""The stored forward pass of an MLP for activation relaxation, and its backward maps.

An MLP here is an ``nn.Sequential`` (nested ones are flattened) of: optional parameter-free
input modules (``Flatten`` or elementwise activations) and then ``Linear`` layers, each
followed by zero or more elementwise activations. Layer ``l`` computes
``a_{l+1} = h_l W_lᵀ + b_l`` and ``h_{l+1} = f_{l+1}(a_{l+1})``; ``f′(a_{l+1})`` is evaluated
once, at the stored forward pre-activation, and reused by every relaxation step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import IncompatibleModelError

Tensor = torch.Tensor

ELEMENTWISE: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.ReLU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.Hardsigmoid, nn.Softplus,
    nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardtanh, nn.Hardswish,
    nn.Softsign, nn.Tanhshrink, nn.LogSigmoid,
)


_aten = torch.ops.aten
#: the activation -> (forward, backward(grad_out, out)) table of the hand-written MLP paths
#: (node perturbation's fast step, bidirectional FA/DFA); the backwards are autograd's own
#: kernels, taking the activation's output: sigmoid g ⊙ h(1 − h), tanh g ⊙ (1 − h²), ReLU
#: g ⊙ [h > 0]. ``(None, None)``: the identity.
ACTIVATION_KERNELS: dict[type[nn.Module], tuple] = {
    nn.Sigmoid: (torch.sigmoid, lambda g, out: _aten.sigmoid_backward(g, out)),
    nn.Tanh: (torch.tanh, lambda g, out: _aten.tanh_backward(g, out)),
    nn.ReLU: (torch.relu, lambda g, out: _aten.threshold_backward(g, out, 0)),
    nn.Identity: (None, None),
}


def plain_mlp(model: nn.Module, linear_types: tuple[type[nn.Module], ...] = (nn.Linear,)
              ) -> tuple[nn.Flatten | None, list[nn.Module], list[nn.Module]] | str:
    """``(flatten, linears, activations)`` of a ``[Flatten,] (Linear[, activation])*`` Sequential,
    the form of the hand-written MLP paths (one activation module of a type in
    :data:`ACTIVATION_KERNELS` or none after each Linear; none, e.g. after the output layer, is a
    new ``nn.Identity()``), or a one-line reason why ``model`` is not of it. The paths compute the
    activations with the kernels of their types, so an in-place ReLU is as good as any.
    ``linear_types``: the modules that count as a Linear layer."""
    if not isinstance(model, nn.Sequential):
        return f"the model is a {type(model).__name__}, not an MLP (Sequential of Linear layers and activations)"
    children = list(model)
    flatten = None
    if children and isinstance(children[0], nn.Flatten):
        flatten, children = children[0], children[1:]
    if not children:
        return "the model has no layers"
    layers, acts = [], []
    i = 0
    while i < len(children):
        lin = children[i]
        if not isinstance(lin, linear_types):
            return f"the model has a {type(lin).__name__} layer where a Linear layer is expected"
        layers.append(lin)
        act = children[i + 1] if i + 1 < len(children) else None
        if act is None or isinstance(act, linear_types):  # a Linear with no activation after it
            acts.append(nn.Identity())
            i += 1
            continue
        if type(act) not in ACTIVATION_KERNELS:
            return (f"the activation {type(act).__name__} has no hand-written form (sigmoid, tanh, "
                    f"relu, identity)")
        acts.append(act)
        i += 2
    return flatten, layers, acts


@dataclass
class MLPLayout:
    """``prefix`` modules act on the input; ``layers[l] = (Linear_l, [activations after it])``."""

    prefix: list[nn.Module]
    layers: list[tuple[nn.Linear, list[nn.Module]]]

    @property
    def n_layers(self) -> int:
        return len(self.layers)


@dataclass
class Chain:
    """One batch's stored forward pass and output error, ready to be relaxed.

    ``forward[l]`` is ``h_l`` (l = 0..L), ``fprime[l]`` is ``f′(a_{l+1})`` of layer ``l``'s
    activation (``None`` for the identity), ``error`` is ``e = ∂loss/∂h_L``.
    """

    layout: MLPLayout
    forward: list[Tensor]
    fprime: list[Tensor | None]
    error: Tensor
    loss: Tensor
    feedback: list[Tensor | None] = field(default_factory=list)  # F_l of T_l; F_0 is None
    derivative: bool = True

    @property
    def output(self) -> Tensor:
        return self.forward[-1]

    def backward(self, l: int, v: Tensor) -> Tensor:
        """``T_l(v) = (v ⊙ f′(a_{l+1})) F_l`` — maps a value of layer ``l+1`` to layer ``l``."""
        fp = self.fprime[l] if self.derivative else None
        if fp is not None:
            v = v * fp
        return torch.mm(v, self.feedback[l])


def _flatten(module: nn.Module) -> list[nn.Module]:
    out: list[nn.Module] = []
    for child in module.children():
        if isinstance(child, nn.Sequential):
            out += _flatten(child)
        else:
            out.append(child)
    return out


def _incompatible(what: str) -> IncompatibleModelError:
    return IncompatibleModelError(
        f"activation relaxation's MLP path cannot relax {what}; it accepts an nn.Sequential of "
        "Flatten (before the first Linear), Linear and elementwise activations "
        f"({', '.join(t.__name__ for t in ELEMENTWISE)}). For other models (convolutions, "
        "pooling, any fx-traceable nn.Module) use make('ar', graph=True), which relaxes every "
        "node with its local vector-Jacobian product (paper App. A).")


def mlp_layout(model: nn.Module) -> MLPLayout:
    """Split ``model`` into input modules and (Linear, activations) layers, or raise."""
    if not isinstance(model, nn.Sequential):
        raise _incompatible(f"a {type(model).__name__} (not an nn.Sequential: its forward is unknown)")
    prefix: list[nn.Module] = []
    layers: list[tuple[nn.Linear, list[nn.Module]]] = []
    for i, m in enumerate(_flatten(model)):
        if isinstance(m, nn.Linear):
            layers.append((m, []))
        elif isinstance(m, ELEMENTWISE):
            (layers[-1][1] if layers else prefix).append(m)
        elif isinstance(m, nn.Flatten) and not layers:
            prefix.append(m)
        else:
            where = "after a Linear layer" if layers else "before the first Linear layer"
            raise _incompatible(f"module {i} ({type(m).__name__}) {where}")
    if not layers:
        raise _incompatible("a model without any nn.Linear layer")
    return MLPLayout(prefix, layers)


def _apply(acts: list[nn.Module], a: Tensor) -> Tensor:
    h = a
    for m in acts:
        if getattr(m, "inplace", False) and h is a:
            h = h.clone()
        h = m(h)
    return h


def activation_derivative(acts: list[nn.Module], a: Tensor, h: Tensor) -> Tensor | None:
    """``f′(a)`` of the composed elementwise activations (``None`` when it is the identity)."""
    acts = [m for m in acts if not isinstance(m, nn.Identity)]
    if not acts:
        return None
    if len(acts) == 1:
        m = acts[0]
        kind = type(m)
        if kind is nn.ReLU:
            return torch.sign(h)  # h = relu(a) >= 0, so sign(h) = 1[a > 0] in one float op
        if kind is nn.Sigmoid:
            return h * (1.0 - h)
        if kind is nn.Tanh:
            return 1.0 - h * h
        if kind is nn.LeakyReLU and m.negative_slope >= 0:
            return torch.full_like(a, float(m.negative_slope)).masked_fill_(a > 0, 1.0)
    with torch.enable_grad():
        a_ = a.detach().clone().requires_grad_(True)
        out = _apply(acts, a_)
        (g,) = torch.autograd.grad(out, a_, torch.ones_like(out))
    return g.detach()


def forward_chain(layout: MLPLayout, x: Tensor, y: Tensor, loss_fn, *,
                  need_fprime: bool = True) -> Chain:
    """Stored forward pass (no autograd graph), ``f′`` at the forward pre-activations, and
    the output error ``e = ∂loss/∂h_L`` from autograd on the loss alone (any loss works)."""
    with torch.no_grad():
        h = x
        for m in layout.prefix:
            h = m(h)
        forward = [h]
        fprime: list[Tensor | None] = []
        for lin, acts in layout.layers:
            a = F.linear(h, lin.weight, lin.bias)
            h = _apply(acts, a) if acts else a
            forward.append(h)
            fprime.append(activation_derivative(acts, a, h) if need_fprime else None)
    with torch.enable_grad():
        out = forward[-1].detach().requires_grad_(True)
        loss = loss_fn(out, y)
        (error,) = torch.autograd.grad(loss, out)
    return Chain(layout, forward, fprime, error.detach(), loss.detach())
