"""Stacked node perturbation (Lansdell, Prakash & Kording 2020): ``np`` (FA form) and ``np-dfa``.

The step of the rule's MLP fast path (:mod:`bioplausible.rules.nodepert.fast`) over a run
dimension, with the ``sgd`` solver (eq 3):

1. clean pass; forward weights learn from the synthetic backward pass (FA form
   ``δ_{l−1} = (δ_l B_l) ⊙ f′``, DFA form ``(e D_l) ⊙ f′``);
2. noisy pass from the clean first layer: ``c_h ξ`` on every hidden layer's output
   (``noise_at="post"``) or pre-activation (``"pre"``), ``ξ`` drawn with each run's own generator
   in the rule's order (layer by layer);
3. ``c = (ℓ̃ − ℓ)/c_h`` per example (MSE losses: ``(w/c_h) Σ_k Δ(Δ + 2(o − t))``, ``Δ = õ − o``;
   others from float64 per-example losses);
4. ``B_k ← B_k − η_k s⁻² δ_kᵀ(g_k − s c ξ_k)`` with ``g_k = δ_k B_k`` the synthetic signal and
   ``s`` the loss's batch factor (1 for sums, 1/B for means).

The forward weights stay frozen for the first ``warmup`` steps.
"""

from __future__ import annotations

import math

import torch

from ...errors import UserError
from .losses import per_example
from .mlp import linear
from .noise import draw_noise
from .steps import PerRunNoise, StackedDFA, StackedFA

_MSE_WEIGHT = {"mse_half_sum": 0.5, "mse_sum": 1.0, "mse_batchmean": 1.0}


class _NPMixin(PerRunNoise):
    feedback_in_step = True  # B is regressed inside the rule's step

    def setup_np(self) -> None:
        rule = self.rules[0]
        cfg = rule.config
        self.post = cfg["noise_at"] == "post"
        self.warmup = int(cfg["warmup"])
        self.count = int(getattr(rule, "_step", 0))
        self.errs: list = [None] * (self.net.depth - 1)
        self.sigs: list = [None] * (self.net.depth - 1)

    def refresh_rates(self) -> None:
        super().refresh_rates()  # the forward rates and c_h
        # η_B of tap k (B of layer k+1), the group ``feedback`` (per layer if split), per run
        self.rate_fb = [None] + [_per_run_lr(self.rules, k) .to(self.net.W[0]).view(-1, 1, 1)
                                 for k in range(1, self.net.depth)]
        self.rate_reg = None

    def forward_frozen(self) -> bool:
        return self.count < self.warmup

    def after_forward(self, hs, y, e, d) -> None:
        """The noisy pass and ``coef = (ℓ̃ − ℓ)/c_h`` per run and example."""
        net, c = self.net, self.c_h
        out = hs[-1]
        B = out.shape[1]
        device, dtype = out.device, out.dtype
        xis = draw_noise([rule.generator(device) for rule in self.rules],
                         [(B, net.W[i].shape[1]) for i in range(net.depth - 1)], device, dtype)
        h = None
        for i in range(net.depth):
            if i == 0:
                a = None if self.post else linear(hs[0], net.W[0], net.b[0])
            else:
                a = linear(h, net.W[i], net.b[i])
            fwd = net.acts[i][1]
            if i == net.depth - 1:
                noisy = a if fwd is None else fwd(a)
                break
            if self.post:
                base = hs[1] if i == 0 else (a if fwd is None else fwd(a))
                h = _plus_noise(base, xis[i], c)
            else:
                z = _plus_noise(a, xis[i], c)
                h = z if fwd is None else fwd(z)
        name = getattr(self.loss_fn, "name", None)
        if d is not None:
            delta = noisy - out
            w = _MSE_WEIGHT[name] if name in _MSE_WEIGHT else 1.0 / max(math.prod(out.shape[2:]), 1)
            coef = delta.mul_(torch.add(delta, d, alpha=2.0)).sum(2)
            coef = coef.mul_(w / c) if isinstance(c, float) else coef.mul_(w / c.view(-1, 1))
        else:
            coef = (per_example(self.loss_fn, noisy, y) - per_example(self.loss_fn, out, y))
            # (ℓ̃ − ℓ)/c_h from float64 losses, then in the model's dtype, as the unstacked rule
            # casts its coefficient before the regression (a float64 coefficient would promote the
            # float32 regression target, which cannot be added into the float32 feedback)
            coef = coef.div_(c if isinstance(c, float) else c.view(-1, 1)).to(dtype)
        if self.count < 10 and not bool((coef != 0).any(1).all()):
            silent = int((~(coef != 0).any(1)).nonzero()[0])
            c_r = self.rules[silent].config["c_h"]
            raise UserError(f"rule {self.rules[0].name!r}: the perturbation c_h={c_r} changed no example's "
                            f"loss in {out.dtype}; raise c_h or train in float64")
        self.xis, self.coef, self.col = xis, coef, coef.unsqueeze(2)
        self.set_scale(B)

    def regress(self, k: int, err: torch.Tensor, g: torch.Tensor, b: torch.Tensor) -> None:
        """Eq 3 for tap ``k`` (0-based): ``B ← B − η s⁻² δᵀ(g − s c ξ)``."""
        target = torch.addcmul(g, self.col, self.xis[k], value=-self.scale)
        self.regress_onto(k, err, target, b)

    def regress_onto(self, k: int, err: torch.Tensor, residual: torch.Tensor, b: torch.Tensor) -> None:
        """``B ← B − η_k s⁻² errᵀ residual`` (``residual = err B − s λ̂``)."""
        b.baddbmm_(torch.mul(err, self.rate_reg[k + 1]).transpose(1, 2), residual)

    def set_scale(self, batch: int) -> None:
        scale = 1.0 if getattr(self.loss_fn, "reduction", "mean") == "sum" else 1.0 / batch
        if scale != getattr(self, "scale", None) or self.rate_reg is None:
            self.rate_reg = [None if r is None else r / (scale * scale) for r in self.rate_fb]  # −η/s²
        self.scale = scale

    def after_update(self) -> None:
        self.count += 1

    def unstack_rule(self) -> None:
        for r, rule in enumerate(self.rules):
            rule._step = self.count
            rule._last = ([None if e is None else e[r] for e in self.errs], None)

    def restack_rule(self) -> None:
        self.count = int(getattr(self.rules[0], "_step", 0))


def _plus_noise(h: torch.Tensor, xi: torch.Tensor, c) -> torch.Tensor:
    """``h + c ξ`` with one ``c`` (a number, the unstacked rule's own op) or one per run ``(R, 1, 1)``."""
    return torch.add(h, xi, alpha=c) if isinstance(c, float) else torch.addcmul(h, xi, c)


def _per_run_lr(rules, layer: int) -> torch.Tensor:
    return torch.tensor([rule.feedback_lr(layer) for rule in rules], dtype=torch.float64).neg_()


class StackedNP(_NPMixin, StackedFA):
    """``np``: FA form, ``B_l`` (W's layout) of layers 2..L regressed onto λ̂."""

    name = "np"

    def setup(self) -> None:
        super().setup()
        self.setup_np()

    def propagate(self, i: int, delta: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        b = self.B[i]
        # δ B as the rule's own step computes it, batch-major (not bmm_as): the regression on noise
        # amplifies any rounding difference, and the stack keeps to the unstacked products' order
        g = torch.bmm(delta, b)
        self.errs[i - 1], self.sigs[i - 1] = delta, g
        if self.rate_fb[i] is not None:
            self.regress(i - 1, delta, g, b)
        return g


class StackedNPDFA(_NPMixin, StackedDFA):
    """``np-dfa``: DFA form, ``D_l`` ``(n_out, n_l)`` regressed onto λ̂ with the output error."""

    name = "np-dfa"

    def setup(self) -> None:
        super().setup()
        self.setup_np()

    def propagate(self, i: int, delta: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        g = super().propagate(i, delta, e)
        self.errs[i - 1], self.sigs[i - 1] = e, g
        return g

    def after_update(self) -> None:
        # D_l is regressed after the whole backward pass (its signal used the old D)
        for k in range(self.net.depth - 1):
            self.regress(k, self.errs[k], self.sigs[k], self.D[k + 1])
        super().after_update()

    def unstack_rule(self) -> None:
        for rule in self.rules:
            rule._step = self.count
            rule._last = None  # the DFA form's metrics read only D and W


class _SGMixin:
    """The synthetic-gradient control: ``B`` regressed onto the true per-example gradient
    ``λ = ∂ℓ/∂h`` at every tap, from an exact backward pass through ``W`` beside the rule's own:
    ``B ← B − η s⁻² δᵀ(δB − λ_batch)`` (``λ_batch = s λ``, the batch loss's gradient)."""

    def after_forward(self, hs, y, e, d) -> None:
        self.hs = hs
        self.set_scale(hs[-1].shape[1])

    def output_delta(self, e, out):
        delta = super().output_delta(e, out)
        self.bp_delta = self.net.act_backward(self.net.depth - 1, e, out)
        return delta

    def true_gradient(self, i: int) -> torch.Tensor:
        """``λ_batch`` at layer ``i``'s input (W before its update); steps the exact chain down."""
        lam = torch.bmm(self.bp_delta, self.net.W[i])
        self.bp_delta = self.net.act_backward(i - 1, lam, self.hs[i])
        return lam


class StackedSG(_SGMixin, StackedNP):
    """``sg``: FA form, ``B_l`` regressed onto the true gradient."""

    name = "sg"

    def propagate(self, i: int, delta: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        b = self.B[i]
        g = torch.bmm(delta, b)
        lam = self.true_gradient(i)
        self.errs[i - 1], self.sigs[i - 1] = delta, g
        self.regress_onto(i - 1, delta, g - lam, b)
        return g


class StackedSGDFA(_SGMixin, StackedNPDFA):
    """``sg-dfa``: DFA form, ``D_l`` regressed onto the true gradient with the output error."""

    name = "sg-dfa"

    def propagate(self, i: int, delta: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        g = StackedDFA.propagate(self, i, delta, e)
        self.errs[i - 1], self.sigs[i - 1] = e, g - self.true_gradient(i)
        return g

    def after_update(self) -> None:
        for k in range(self.net.depth - 1):
            self.regress_onto(k, self.errs[k], self.sigs[k], self.D[k + 1])
        self.count += 1


__all__ = ["StackedNP", "StackedNPDFA", "StackedSG", "StackedSGDFA", "draw_noise"]
