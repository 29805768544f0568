"""Shared pieces of BFA and BDFA (Luo, Fu & Glass 2017): the layer chain of a plain MLP,
activation derivatives, the output error and the weight max-norm of the authors' code.

Both rules run their own forward pass over the layers of a plain ``nn.Sequential`` MLP
(:class:`bioplausible.models.MLP`: optional Flatten, then Linear/activation pairs) and write the
updates of every matrix into ``.grad`` themselves, so they need the chain of Linear layers with
one elementwise activation after each.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

from ...errors import ConfigError, IncompatibleModelError
from ...nn.mlp import ACTIVATION_KERNELS, plain_mlp

# Hidden activations: ``signal ⊙ f'(a)`` from the activity ``h = f(a)`` in one fused kernel
# (the ones autograd uses for these modules); ``None``: the identity, f' = 1.
_DERIVATIVES = {kind: backward for kind, (_forward, backward) in ACTIVATION_KERNELS.items()}
SUPPORTED = "Flatten, then Linear layers each followed by Tanh, Sigmoid, ReLU or Identity"


@dataclass
class Chain:
    """The MLP as ``linears[k]`` (W_{k+1} of the paper) and ``acts[k]`` applied after it."""

    flatten: bool
    linears: list[nn.Linear]
    acts: list[nn.Module]

    @property
    def sizes(self) -> list[int]:
        return [self.linears[0].in_features] + [lin.out_features for lin in self.linears]

    @property
    def n_hidden(self) -> int:
        return len(self.linears) - 1


def mlp_chain(model: nn.Module, rule: str) -> Chain:
    """Split ``model`` into its Linear/activation chain (:func:`bioplausible.nn.mlp.plain_mlp`, the
    parser of every hand-written MLP path) or raise one line saying what is supported."""
    plan = plain_mlp(model)
    if isinstance(plan, str):
        raise IncompatibleModelError(f"rule {rule!r} supports plain MLPs only ({SUPPORTED}): {plan}; "
                                     f"use fa or dfa for other models")
    flatten, linears, acts = plan
    if flatten is not None and (flatten.start_dim != 1 or flatten.end_dim != -1):
        # the rule's passes flatten from dimension 1, as the library's MLPs do
        raise IncompatibleModelError(f"rule {rule!r}: the model flattens other than from dimension 1 "
                                     f"(Flatten(start_dim={flatten.start_dim}, end_dim={flatten.end_dim}))")
    for prev, nxt in itertools.pairwise(linears):
        if prev.out_features != nxt.in_features:
            raise IncompatibleModelError(f"rule {rule!r}: Linear sizes do not chain "
                                         f"({prev.out_features} -> {nxt.in_features})")
    return Chain(flatten is not None, linears, acts)


def mul_derivative(signal: torch.Tensor, act: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """``signal ⊙ f'(a)`` for the activation module ``act`` with activity ``h = f(a)``."""
    fn = _DERIVATIVES[type(act)]
    return signal if fn is None else fn(signal, h)


def forward_chain(chain: Chain, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Inputs of every Linear ``[h_0, …, h_N]`` and the last layer's pre-activation ``a_{N+1}``."""
    h = x.flatten(1) if chain.flatten else x
    hs = [h]
    for lin, act in zip(chain.linears[:-1], chain.acts[:-1]):
        h = act(nn.functional.linear(h, lin.weight, lin.bias))
        hs.append(h)
    last = chain.linears[-1]
    return hs, nn.functional.linear(h, last.weight, last.bias)


def output_error(chain: Chain, a_out: torch.Tensor, y: torch.Tensor, loss_fn
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, output, e)`` with ``e = ∂loss/∂a_{N+1}`` (``ŷ − y`` for sigmoid outputs + BCE)."""
    with torch.enable_grad():
        a = a_out.detach().requires_grad_(True)
        out = chain.acts[-1](a)
        loss = loss_fn(out, y)
        (e,) = torch.autograd.grad(loss, a)
    return loss.detach(), out.detach(), e


def _reusable(p: torch.Tensor, shape) -> bool:
    g = p.grad
    return g is not None and g.shape == shape and g.dtype == p.dtype and g.is_contiguous()


def write_grad(p: torch.Tensor, g: torch.Tensor) -> None:
    p.grad = g


def grad_mm(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``p.grad = a @ b``, written into the existing ``.grad`` buffer when there is one."""
    if _reusable(p, p.shape):
        torch.mm(a, b, out=p.grad)
    else:
        p.grad = a.mm(b)


def grad_sum(p: torch.Tensor, delta: torch.Tensor) -> None:
    """``p.grad = Σ_rows delta`` (a bias gradient)."""
    if _reusable(p, p.shape):
        torch.sum(delta, 0, out=p.grad)
    else:
        p.grad = delta.sum(0)


def one_hot(y: torch.Tensor, n: int, like: torch.Tensor) -> torch.Tensor:
    """Class-index targets as one-hot rows in ``like``'s dtype; float targets pass through."""
    if y.dim() == 1 and not y.is_floating_point():
        return nn.functional.one_hot(y.long(), n).to(like.dtype)
    if y.shape[-1] != n:
        raise ConfigError(f"targets of shape {tuple(y.shape)} do not match the {n} network outputs")
    return y.to(like.dtype)


@torch.no_grad()
def apply_max_norm(weights, max_norm: float | None) -> None:
    """The authors' code's max-norm: every row and every column of W has L2 norm ≤ ``max_norm``."""
    if max_norm is None:
        return
    for w in weights:
        w.copy_(torch.renorm(w, 2, 0, max_norm))
        w.copy_(torch.renorm(w, 2, 1, max_norm))
