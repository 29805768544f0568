"""Stacked activation relaxation, MLP path (Millidge, Tschantz, Buckley & Seth 2022): ``ar``.

The rule's step (:mod:`bioplausible.rules.ar`) over a run dimension: the stored forward pass,
``f′`` at the forward pre-activations, the top clamped to the output error (each example's own
error for batch-mean losses), the hidden layers relaxed by the rule's solver — the closed form,
the literal loop or the fixed point of :mod:`bioplausible.rules.ar_relax`, which need only the
backward maps ``T_l(v) = (v ⊙ f′) F_l``, here batched products with ``F_l = W_l`` or ψ_l — and
``W_l.grad = (x_{l+1} ⊙ f′)ᵀ h_l`` (learned ψ_l takes the same update). A run whose relaxed
values exceed the rule's divergence threshold stops as it does alone (:class:`RunsDiverged`).
"""

from __future__ import annotations

import math

import torch

from .losses import loss_and_error
from .steps import StackedRule, sgd_


class RunsDiverged(Exception):
    """Raised by a step after every run was stepped: ``messages[k]`` for the runs ``k`` that
    diverged (their state is garbage; the others are fine)."""

    def __init__(self, messages: dict[int, str], losses: torch.Tensor, outputs: torch.Tensor) -> None:
        super().__init__(next(iter(messages.values())))
        self.messages, self.losses, self.outputs = messages, losses, outputs


def _fprime(name: str, h: torch.Tensor) -> torch.Tensor | None:
    """``f′(a)`` from ``h = f(a)`` as the rule computes it (``ar_mlp.activation_derivative``)."""
    if name == "relu":
        return torch.sign(h)
    if name == "sigmoid":
        return h * (1.0 - h)
    if name == "tanh":
        return 1.0 - h * h
    return None


class StackedAR(StackedRule):
    name = "ar"

    def setup(self) -> None:
        cfg = self.rules[0].config
        self.cfg = cfg
        self.learned = cfg["backward_weights"] == "learned"
        self.transpose = cfg["backward_weights"] == "transpose"
        net = self.net
        if not self.transpose:
            self.psi_runs = [None] + [[run[i].feedback for run in net.layers] for i in range(1, net.depth)]
            self.Psi = [None] + [torch.stack([t.detach() for t in runs]).contiguous() for runs in self.psi_runs[1:]]
        self.steps_done = self.rules[0]._steps_done

    def feedback_tensors(self) -> dict[str, list]:
        if self.transpose:
            return {}
        return {"psi": [(p, runs) for p, runs in zip(self.Psi[1:], self.psi_runs[1:])]}

    def select_rule(self, keep: list[int]) -> None:
        if not self.transpose:
            idx = torch.tensor(keep, device=self.net.W[0].device)
            self.Psi = [None] + [p.index_select(0, idx) for p in self.Psi[1:]]
            self.psi_runs = [None] + [[runs[r] for r in keep] for runs in self.psi_runs[1:]]

    def refresh_rates(self) -> None:
        super().refresh_rates()
        if self.learned:
            self.rate_psi = [None] + [self._rates_of(runs, (1, 1), self.net.W[0]) for runs in self.psi_runs[1:]]

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from ...rules.ar.ar_relax import relax_closed_form, relax_fixed_point, relax_loop

        net, cfg = self.net, self.cfg
        hs = net.forward(x)
        out = hs[-1]
        loss, error, _ = loss_and_error(self.loss_fn, out, y)
        need = cfg["derivative"] or cfg["weight_derivative"]
        fprime = [_fprime(net.acts[i][0], hs[i + 1]) if need else None for i in range(net.depth)]
        per_example = out.shape[1] if getattr(self.loss_fn, "reduction", "sum") == "mean" else 1
        if per_example != 1:
            error = error * per_example
        feedback = [None] + [net.W[i] if self.transpose else self.Psi[i] for i in range(1, net.depth)]
        derivative = cfg["derivative"]

        def backward(l: int, v: torch.Tensor) -> torch.Tensor:
            fp = fprime[l] if derivative else None
            if fp is not None:
                v = v * fp
            return torch.bmm(v, feedback[l])

        hidden0 = hs[1:-1]
        if cfg["solver"] == "loop":
            relaxed = relax_loop(hidden0, error, backward, cfg["relax_steps"], cfg["eta_x"], cfg["sweep"])
        elif cfg["solver"] == "fixed_point":
            relaxed = relax_fixed_point(hidden0, error, backward)
        else:
            relaxed = relax_closed_form(hidden0, error, backward, cfg["relax_steps"], cfg["eta_x"], cfg["sweep"])
        values = relaxed + [error]
        diverged = self._check(loss, values)
        for l in range(net.depth):
            delta = values[l]
            fp = fprime[l]
            if cfg["weight_derivative"] and fp is not None:
                delta = delta * fp
            if per_example != 1:
                delta = delta / per_example
            gw = torch.bmm(delta.transpose(1, 2), hs[l])
            if self.capture:
                self.captured[l] = (gw.clone(), None if net.b[l] is None else delta.sum(1))
            if self.learned and l > 0:
                sgd_(self.Psi[l], gw, self.rate_psi[l])
            sgd_(net.W[l], gw, self.rate_w[l])
            self.step_bias(l, delta)
        if diverged:
            raise RunsDiverged(diverged, loss, out)
        return loss, out

    def _check(self, loss: torch.Tensor, values: list[torch.Tensor]) -> dict[int, str]:
        """The rule's divergence check per run: the largest |relaxed value| and a finite loss."""
        self.steps_done += 1
        peaks = torch.stack([v.abs().amax(dim=tuple(range(1, v.dim()))) for v in values if v.numel()]).amax(0)
        self.last_max = peaks
        thr = self.cfg["divergence_threshold"]
        out: dict[int, str] = {}
        for k, (peak, value) in enumerate(zip(peaks.tolist(), loss.tolist())):
            bad_loss = not math.isfinite(value)
            if bad_loss or not math.isfinite(peak) or (thr is not None and peak > thr):
                what = (f"the loss is {value}" if bad_loss else
                        f"the largest relaxed activity value is {peak:.3g} (threshold {thr})")
                hint = (" Fixed random backward weights (FA) are known to diverge (paper §4.1);"
                        " try backward_weights='learned' or a smaller learning rate."
                        if self.cfg["backward_weights"] == "random" else " Try a smaller learning rate.")
                out[k] = (f"activation relaxation diverged at training step {self.steps_done}: {what}.{hint}")
        return out

    def unstack_rule(self) -> None:
        last = getattr(self, "last_max", None)
        for r, rule in enumerate(self.rules):
            rule._steps_done = self.steps_done
            if last is not None:
                rule._last_max = float(last[r])

    def restack_rule(self) -> None:
        self.steps_done = self.rules[0]._steps_done


__all__ = ["RunsDiverged", "StackedAR"]
