"""Bidirectional direct feedback alignment, BDFA (Luo, Fu & Glass 2017, §3.2).

Forward learning is DFA through learned direct matrices ``B_l`` (stored ``(n_out, n_l)``, as in
the authors' code: the signal to hidden layer l is ``e B_l`` in row form, eq 36–38)::

    δ_{N+1} = e = ∂l→/∂a_{N+1},   δ_l = (e B_l) ⊙ σ'(a_l),   ∇W→_l = δ_l h_{l−1}ᵀ

Each ``B_l`` is trained by a per-layer agreement loss between the label's projection
``a←_l = y′ B_l`` (eq 39, linear) and the layer's activity ``h_l`` (treated as a constant),
``s = sigmoid(a←_l · h_l)``, one scalar per sample, summed over the batch:

* ``update="code"`` (default; the first author's code): ascent on ``Σ log s``, i.e.
  ``∇B_l = −Σ_n (1 − s_n) y′_n h_nᵀ`` (descent convention; the code steps it at rate 5e-5);
* ``update="paper"`` (a literal reading of eq 40–42): descent on ``Σ (1 − s)``, i.e.
  ``∇B_l = −Σ_n s_n(1 − s_n) y′_n h_nᵀ``.

The target ``y′`` (``target``), with ``ŷ = sigmoid(a_{N+1})`` of the same forward pass:
``"none"`` (default, the paper's MNIST setting) ``y′ = y``; ``"paper"`` ``y′ = y + αŷ`` (eq 51,
the paper's CIFAR-10 setting); ``"code"`` ``y′`` = ``αŷ`` with the true class's entry set to 1
(the code, on every dataset). ``alpha`` = 0.25.

Pairing (``pairing``): eq 36–37 feed ``W←_1`` to the last hidden layer while eq 40–41 train
``a←_1`` against ``h→_1``. ``"fed"`` (default) trains each matrix against the layer it feeds;
``"index"`` trains the matrix feeding layer ``N+1−i`` against ``h_i`` (the literal indices),
which needs mirrored hidden widths. ``B_l`` starts U(±1/√n_l) (the code). Both ``.grad`` are
written in one step, so B is used for δ before its own update, as in the code. ``max_norm``: as
in :mod:`.bfa`, applied to the forward matrices.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from ...core.rule import FeedbackPair, Rule, StepResult
from ...errors import ConfigError, IncompatibleModelError
from ..registry import register
from .common import (
    Chain,
    apply_max_norm,
    forward_chain,
    grad_mm,
    grad_sum,
    mlp_chain,
    mul_derivative,
    one_hot,
    output_error,
    write_grad,
)

UPDATES = ("code", "paper")
TARGETS = ("none", "paper", "code")
PAIRINGS = ("fed", "index")


def mixed_target(y1: torch.Tensor, y_hat: torch.Tensor, target: str, alpha: float) -> torch.Tensor:
    """``y′`` from one-hot ``y1`` and the prediction ``ŷ`` (see the module docstring)."""
    if target == "none":
        return y1
    if target == "paper":
        return y1 + alpha * y_hat
    return torch.where(y1 > 0.5, torch.ones_like(y1), alpha * y_hat)


def agreement_grad(b: torch.Tensor, y_mix: torch.Tensor, h: torch.Tensor, update: str) -> torch.Tensor:
    """Descent direction on ``B`` of the per-layer agreement loss (``−Σ log s`` or ``Σ (1 − s)``)."""
    s = torch.sigmoid((y_mix.mm(b) * h).sum(1, keepdim=True))
    weight = (1.0 - s) if update == "code" else s * (1.0 - s)
    return -(y_mix.t().mm(weight * h))


@register("bdfa")
class BidirectionalDFA(Rule):
    """Bidirectional direct feedback alignment (BDFA): DFA through learned direct matrices.

    ``δ_l = (e B_l) ⊙ σ′(a_l)`` (Luo, Fu & Glass 2017, §3.2, eqs 36–38), and each ``B_l`` learns
    from the agreement ``σ((y′B_l)·h_l)`` of the label's projection with the layer's activity
    (eqs 39–42).

    Options: ``update`` — ``"code"`` (ascent on Σ log σ, the authors' code) or ``"paper"``
    (descent on Σ(1 − σ)); ``target`` — y′ = y (``"none"``), y + αŷ (``"paper"``, eq 51) or the
    code's form (``"code"``); ``alpha`` — α (0.25); ``pairing`` — ``"fed"`` (each matrix against
    the layer it feeds) or ``"index"`` (the literal indices); ``max_norm`` — as ``bfa``.

    Models: MLPs (``nn.Linear`` + elementwise activations).
    """

    option_help: ClassVar[dict[str, str]] = {
        "update": "B_l's agreement update: code (ascent on Σ log s, the authors' code) or paper (descent on Σ(1 − s))",
        "target": "the label projection's target y′: none (y), paper (y + αŷ, eq 51) or code (αŷ with the true class 1)",
        "alpha": "α of the mixed target y′ (target paper or code)",
        "pairing": "which layer's activity trains B_l: fed (the layer it feeds) or index (eqs 40-41's literal indices)",
    }
    family = "feedback"
    paper = "Luo, Fu & Glass 2017"
    summary = "DFA through direct matrices learned by agreement of y′B_l with h_l"
    defaults: ClassVar[dict[str, Any]] = {"update": "code", "target": "none", "alpha": 0.25,
                                          "pairing": "fed", "max_norm": None}

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self.chain: Chain | None = None
        self._n_direct = 0
        self.partner: list[int] = []          # the hidden layer whose activity trains B_l

    def validate(self) -> None:
        self.check_choice("update", UPDATES)
        self.check_choice("target", TARGETS)
        self.check_choice("pairing", PAIRINGS)
        self.check_number("alpha", 0.0)
        if self.config["max_norm"] is not None:
            self.check_number("max_norm", 0.0, positive=True)

    def prepare(self, model: nn.Module, example: torch.Tensor | None = None) -> nn.Module:
        chain = mlp_chain(model, "bdfa")
        sizes, n = chain.sizes, chain.n_hidden
        if self.config["pairing"] == "index":
            hidden = sizes[1:-1]
            if hidden != hidden[::-1]:
                raise IncompatibleModelError(
                    f"rule 'bdfa': pairing='index' trains the matrix feeding hidden layer N+1-i on h_i, "
                    f"which needs mirrored hidden widths; got {hidden}; use pairing='fed'")
            self.partner = [n + 1 - l for l in range(1, n + 1)]
        else:
            self.partner = list(range(1, n + 1))
        self.chain = chain
        ref = chain.linears[0].weight
        gen = torch.Generator(device=ref.device)
        gen.manual_seed(self.seed * 7_919 + 7_877)
        self._n_direct = n
        for l in range(1, n + 1):
            bound = 1.0 / math.sqrt(sizes[l])
            b = torch.empty(sizes[-1], sizes[l], device=ref.device, dtype=ref.dtype).uniform_(
                -bound, bound, generator=gen)
            self.own(f"B.{l}", b, group="feedback", layer=l)
        return model

    @property
    def direct(self) -> list[torch.Tensor]:
        """``[B_1, …, B_N]``, each ``(n_out, n_l)`` (owned tensors ``B.l``, group ``feedback``)."""
        return [self.owned.get(f"B.{l}") for l in range(1, self._n_direct + 1)]

    def train_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn) -> StepResult:
        chain = self.chain
        if chain is None:
            raise ConfigError("rule 'bdfa' is not prepared: call rule.prepare(model) before training")
        n = chain.n_hidden
        direct = self.direct
        with torch.no_grad():
            hs, a_out = forward_chain(chain, x)
            loss, out, e = output_error(chain, a_out, y, loss_fn)
            # one GEMM for every hidden layer's direct signal e B_l
            signal = e.mm(torch.cat(direct, 1)) if n > 1 else (e.mm(direct[0]) if n else None)
            parts = signal.split([b.shape[1] for b in direct], 1) if n else ()
            last = chain.linears[-1]
            grad_mm(last.weight, e.t(), hs[n])
            if last.bias is not None:
                grad_sum(last.bias, e)
            for l in range(1, n + 1):
                delta = mul_derivative(parts[l - 1].contiguous(), chain.acts[l - 1], hs[l])
                lin = chain.linears[l - 1]
                grad_mm(lin.weight, delta.t(), hs[l - 1])
                if lin.bias is not None:
                    grad_sum(lin.bias, delta)
            if n:
                y1 = one_hot(y, chain.sizes[-1], a_out)
                y_hat = torch.sigmoid(a_out) if isinstance(chain.acts[-1], nn.Identity) else out
                y_mix = mixed_target(y1, y_hat, self.config["target"], float(self.config["alpha"]))
                for l, b in enumerate(direct, start=1):
                    write_grad(b, agreement_grad(b, y_mix, hs[self.partner[l - 1]], self.config["update"]))
        return StepResult(loss, out)

    def after_step(self, model: nn.Module) -> None:
        if self.config["max_norm"] is not None and self.chain is not None:
            apply_max_norm([lin.weight for lin in self.chain.linears], self.config["max_norm"])

    def feedback_pairs(self, model: nn.Module) -> list[FeedbackPair]:
        """Direct matrices have shape ``(n_out, n_l)``, not W's: pairs carry ``feedback=None``."""
        names = {id(m): name for name, m in model.named_modules()}
        return [FeedbackPair(names.get(id(lin), f"linear{k}"), lin.weight, None)
                for k, lin in enumerate(self.chain.linears)] if self.chain else []


__all__ = ["BidirectionalDFA", "agreement_grad", "mixed_target"]
