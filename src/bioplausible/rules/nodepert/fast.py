"""Fast path of a node-perturbation step for plain MLPs: no autograd graph, no module calls.

The step of :class:`~.rule._NodePerturbation` for an ``nn.Sequential`` of an optional leading
``Flatten`` and ``Linear`` layers each followed by one elementwise activation (sigmoid, tanh,
ReLU or identity), with no dropout. The same equations as the general path, written
out by hand so that a step on a small network is a few dozen tensor operations:

* clean pass ``a_i = W_i h_{i-1} + b_i``, ``h_i = σ_i(a_i)``, kept for the weight gradients;
* output error ``e = ∂loss/∂o``: for the MSE losses by the formula autograd's kernel evaluates
  (bit for bit), for any other loss by autograd on the loss alone;
* ``c = (ℓ̃ − ℓ)/c_h`` per example: for the MSE losses ``(w/c_h) Σ_k Δ(Δ + 2(o − t))``,
  ``Δ = õ − o``, in the outputs' dtype (float32 or wider: no cancellation of two large losses);
  otherwise from float64 per-example losses (:func:`~.estimator.loss_difference`);
* noisy pass from the clean ``h_1`` (``noise_at="post"``) or ``a_1`` (``"pre"``), the same draws
  in the same order as the general path;
* backward pass with the aten kernels autograd itself calls (``sigmoid_backward``,
  ``tanh_backward``, ``threshold_backward``; ``δᵀh`` as ``mm``, ``Σδ`` as ``sum(0)``), so the
  forward-weight gradients are FA's / DFA's bit for bit (``test_zero_feedback_rate_...``);
* eq 3 reuses the synthetic signal ``g = δB`` the backward pass formed:
  ``G = Σ_n ẽ_nᵀ(ẽ_n B − λ̂_n) = s⁻² δᵀ(g − s·c ξ)`` with ``ẽ = δ/s`` and ``c = (ℓ̃ − ℓ)/c_h``:
  two operations per feedback matrix (``addcmul`` and ``addmm_``).

:func:`plan_mlp` returns ``None`` for any other model; the rule then takes the general path.
"""

from __future__ import annotations

import torch
from torch import nn

from ...nn.mlp import ACTIVATION_KERNELS, plain_mlp
from .estimator import _MSE_WEIGHT

_linear = torch.nn.functional.linear

# module type -> (forward, backward(grad_out, out)): the shared table of nn.mlp
_ACTS = ACTIVATION_KERNELS


class MLPPlan:
    """The Linear layers of a plain MLP and the activation after each."""

    def __init__(self, flatten: nn.Flatten | None, layers: list[nn.Linear], acts: list[tuple],
                 modules: list[nn.Module]) -> None:
        self.flatten, self.layers, self.acts = flatten, layers, acts
        self.params = [layer._parameters for layer in layers]  # live dicts: W, b looked up per step
        from torch.nn.modules import module as m

        self._hook_dicts = [m._global_forward_hooks, m._global_forward_pre_hooks, m._global_backward_hooks,
                            m._global_backward_pre_hooks]
        for mod in modules:
            self._hook_dicts += [mod._forward_hooks, mod._forward_pre_hooks, mod._backward_hooks,
                                 mod._backward_pre_hooks]
        self.hooks = self.hook_count()

    def hook_count(self) -> int:
        """Hooks on the plan's modules, global module hooks and gradient hooks on its weights and
        biases: the fast path calls no module and runs no autograd, so a hook added after planning
        must send the step down the general path."""
        count = sum(map(len, self._hook_dicts))
        for p in self.params:
            for t in (p["weight"], p["bias"]):
                if t is not None and (t._backward_hooks or t._post_accumulate_grad_hooks):
                    count += 1 + len(t._backward_hooks or ()) + len(t._post_accumulate_grad_hooks or ())
        return count


def plan_mlp(model: nn.Module, layers: list[nn.Module]) -> MLPPlan | None:
    """An :class:`MLPPlan` when ``model`` is ``[Flatten,] (Linear[, activation])*`` in that order
    (:func:`bioplausible.nn.mlp.plain_mlp`; a Linear with nothing after it, e.g. the output layer,
    has the identity), with ``layers`` its Linear layers; otherwise ``None``."""
    plan = plain_mlp(model)
    if isinstance(plan, str):
        return None
    flatten, linears, modules = plan
    if len(linears) != len(layers) or any(a is not b for a, b in zip(linears, layers)):
        return None
    acts = [_ACTS[type(m)] for m in modules]
    return MLPPlan(flatten, layers, acts, [model, *list(model)])


# MSE losses: ∂loss/∂o = k·(o − t), computed as autograd's mse_loss_backward does (bit for bit):
# (norm · (o − t)) · g with norm = 2 (sum) or 2/numel (mean) and g the upstream factor
_MSE_GRAD = {"mse_half_sum": (2.0, 0.5), "mse_sum": (2.0, 1.0), "mse_batchmean": (2.0, "1/N"),
             "mse": ("2/numel", 1.0)}


def output_error(loss_fn, o: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(e, o − t)`` with ``e = ∂loss/∂o`` for the library's MSE losses, without autograd and equal
    to autograd's to the bit (``test_nodepert_fast``); ``None`` for any other loss (the caller uses
    autograd)."""
    rule = _MSE_GRAD.get(getattr(loss_fn, "name", None))
    if rule is None or t.shape != o.shape or t.dtype != o.dtype:
        return None
    norm, up = rule
    d = torch.sub(o, t)
    if norm == "2/numel":  # mean: fl(2/numel) · d
        return torch.mul(d, 2.0 / o.numel()), d
    if up == 0.5:  # (2·d)·0.5 is d exactly (2·d is exact; halving it restores d)
        return d, d
    e = torch.mul(d, 2.0)  # exact
    if up == "1/N":
        e.mul_(1.0 / o.shape[0])
    return e, d


MSE_NAMES = frozenset(("mse_half_sum", "mse_sum", "mse_batchmean", "mse"))


def mse_coefficient(name: str, noisy: torch.Tensor, clean: torch.Tensor, d: torch.Tensor,
                    c: float) -> torch.Tensor:
    """``(ℓ̃ − ℓ)/c`` per example for a per-example MSE ``ℓ = w Σ_k (o − t)²``, computed as
    ``(w/c) Σ_k Δ(Δ + 2d)`` with ``Δ = õ − o`` and ``d = o − t``: no cancellation of two large
    losses, so the outputs' dtype (float32 or wider; the rule refuses lower) keeps full relative
    precision."""
    delta = noisy - clean
    w = _MSE_WEIGHT[name] if name in _MSE_WEIGHT else 1.0 / max(clean[0].numel(), 1)
    return delta.mul_(torch.add(delta, d, alpha=2.0)).sum(1).mul_(w / c)


def _act(fn, a: torch.Tensor) -> torch.Tensor:
    return a if fn is None else fn(a)


def _act_backward(fn, g: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return g if fn is None else fn(g, out)


def clean_forward(plan: MLPPlan, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``(inputs, pre)``: the input of every layer (``inputs[-1]`` is the output) and ``a_1``."""
    if plan.flatten is not None and not (x.dim() == 2 and plan.flatten.start_dim in (1, -1)):
        x = x.flatten(plan.flatten.start_dim, plan.flatten.end_dim)
    hs = [x]
    a1 = None
    for p, (fwd, _) in zip(plan.params, plan.acts):
        a = _linear(hs[-1], p["weight"], p["bias"])
        if a1 is None:
            a1 = a
        hs.append(_act(fwd, a))
    return hs, [a1]


def noisy_forward(plan: MLPPlan, hs: list[torch.Tensor], a1: torch.Tensor, c: float, post: bool,
                  gen: torch.Generator, xis: list) -> torch.Tensor:
    """The noisy output: ``c ξ_k`` on every hidden layer's output (``post``) or pre-activation,
    starting from the clean ``h_1`` / ``a_1``; the draws are stored in ``xis``."""
    params, acts = plan.params, plan.acts
    last = len(params) - 1
    h = None
    for i in range(len(params)):
        if i == 0:
            a = a1
        else:
            a = _linear(h, params[i]["weight"], params[i]["bias"])
        if i == last:
            return _act(acts[i][0], a)
        if post:
            base = hs[1] if i == 0 else _act(acts[i][0], a)
            xi = torch.randn(base.shape, generator=gen, device=base.device, dtype=base.dtype)
            h = torch.add(base, xi, alpha=c)
        else:
            xi = torch.randn(a.shape, generator=gen, device=a.device, dtype=a.dtype)
            h = _act(acts[i][0], torch.add(a, xi, alpha=c))
        xis[i] = xi
    raise AssertionError("unreachable")


def backward(plan: MLPPlan, hs: list[torch.Tensor], e: torch.Tensor, form: str,
             feedback: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Fill every Linear's ``.grad`` from the output error ``e``; returns, per tap ``k`` (input of
    layer ``k + 1``), the error ``δ`` that tap's feedback regresses with and the signal ``g = δB``."""
    params, acts = plan.params, plan.acts
    L = len(params)
    errs: list[torch.Tensor] = [None] * (L - 1)  # type: ignore[list-item]
    sigs: list[torch.Tensor] = [None] * (L - 1)  # type: ignore[list-item]
    delta = _act_backward(acts[-1][1], e, hs[-1])
    if form == "dfa":  # one GEMM e·[D_1 … D_{L-1}] as the DFA head does
        b_cat = feedback[0] if len(feedback) == 1 else torch.cat(feedback, dim=1)
        signal = e.mm(b_cat)
        parts = signal.split([f.shape[1] for f in feedback], dim=1) if len(feedback) > 1 else (signal,)
        for k in range(L - 1):
            errs[k], sigs[k] = e, parts[k]
    for i in reversed(range(L)):
        w, bias = params[i]["weight"], params[i]["bias"]
        if w.requires_grad:  # a frozen tensor gets no gradient, as under autograd
            w.grad = delta.t().mm(hs[i])
        if bias is not None and bias.requires_grad:
            bias.grad = delta.sum(0)
        if i == 0:
            break
        if form == "fa":
            g = delta.matmul(feedback[i - 1])
            errs[i - 1], sigs[i - 1] = delta, g
        else:
            g = sigs[i - 1]
        delta = _act_backward(acts[i - 1][1], g, hs[i])
    return errs, sigs


def regress_sgd(feedback: list[torch.Tensor], errs: list[torch.Tensor], sigs: list[torch.Tensor],
                xis: list[torch.Tensor], coef: torch.Tensor, scale: float, rates: list[float]) -> None:
    """Eq 3 in place: ``B_k ← B_k − η_k s⁻² δ_kᵀ(g_k − s c ξ_k)`` (see the module docstring)."""
    col = None
    for b, err, g, xi, lr in zip(feedback, errs, sigs, xis, rates):
        if not lr:
            continue
        if col is None:
            col = (coef if coef.dtype == b.dtype else coef.to(b.dtype)).unsqueeze(1)
        b.addmm_(err.t(), torch.addcmul(g, col, xi, value=-scale), alpha=-lr / (scale * scale))


def regress_ridge(feedback: list[torch.Tensor], V: list[torch.Tensor], S: list[torch.Tensor],
                  errs: list[torch.Tensor], xis: list[torch.Tensor], coef: torch.Tensor, scale: float) -> None:
    """App. C.3 in place: ``V += ẽᵀẽ``, ``S += (c ẽ)ᵀξ`` (= ẽᵀλ̂), ``B = V⁻¹S``, with ``ẽ = δ/s``."""
    col = None
    for b, v, s_, err, xi in zip(feedback, V, S, errs, xis):
        e = (err if scale == 1.0 else err / scale).to(v.dtype)
        if col is None:
            col = coef.to(v.dtype).unsqueeze(1)
        v.addmm_(e.t(), e)
        s_.addmm_(e.mul(col).t(), xi.to(v.dtype))
        b.copy_(torch.linalg.solve(v, s_))


__all__ = ["MSE_NAMES", "MLPPlan", "backward", "clean_forward", "mse_coefficient", "noisy_forward", "output_error", "plan_mlp", "regress_ridge", "regress_sgd"]
