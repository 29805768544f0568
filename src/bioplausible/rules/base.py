"""The rule contract: a learning rule is a gradient estimator.

For one batch, :meth:`Rule.train_step` writes an update direction into ``.grad`` of every tensor
the rule trains — the model's forward weights and the rule's own auxiliary tensors (feedback
matrices ``B``, ghost-unit weights, inter-stream matrices) — and an ordinary ``torch.optim``
optimizer applies them. ``.grad`` holds a *descent* direction in the optimizer's sign
convention (``p ← p − lr·grad`` for SGD), so BP's ``.grad`` is ∂loss/∂p.

Two families share the contract (design.md §2):

* feedback-pathway rules convert ``nn.Linear``/``nn.Conv2d`` into layers whose backward pass
  uses a feedback tensor; their step is ``loss.backward()``;
* circuit rules (activation relaxation, ghost units, SAL) run batched neural dynamics over the
  layers of the same plain model in their own ``train_step``.

Life cycle, as driven by :func:`bioplausible.train.fit` or a hand-written loop::

    rule = make("kp", decay=1e-4)
    model = rule.prepare(model)                  # once: may convert layers, create state
    opt = torch.optim.SGD(rule.param_groups(model, lr=0.1))
    for x, y in batches:
        out = rule.train_step(model, x, y, loss)  # fills .grad
        opt.step()
        rule.after_step(model)                   # e.g. the weight-mirror phase
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import ConfigError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class StepResult:
    """What one training step returns: the batch loss and the model output (both detached)."""

    loss: torch.Tensor
    output: torch.Tensor


@dataclass
class FeedbackPair:
    """A forward weight and the feedback tensor that replaces it in the backward pass.

    ``feedback`` is stored in the layout of ``weight`` (so that for a Linear layer the backward
    signal is ``δ @ feedback``, i.e. the spec's ``B_l`` is ``feedback.T``); ``None`` for rules
    whose feedback is not a stored tensor of that shape (DFA stores ``(n_out_net, n_layer)``).
    """

    name: str
    weight: torch.Tensor
    feedback: torch.Tensor | None


class Rule:
    """Base class of all learning rules. Subclasses set ``defaults`` and override the hooks.

    ``defaults`` maps each hyperparameter to its default; unknown keyword arguments are
    rejected with a :class:`~bioplausible.errors.ConfigError` naming the accepted ones.
    """

    name: ClassVar[str] = "rule"
    family: ClassVar[str] = "exact"  # "exact" | "feedback" | "circuit"
    paper: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **config: Any) -> None:
        unknown = sorted(set(config) - set(self.defaults))
        if unknown:
            accepted = ", ".join(sorted(self.defaults)) or "none"
            raise ConfigError(
                f"rule {self.name!r} has no option {unknown[0]!r}; accepted options: {accepted}"
            )
        self.config: dict[str, Any] = {**copy.deepcopy(self.defaults), **config}
        self.seed: int = 0
        self._generators: dict[str, torch.Generator] = {}
        self.validate()

    # ------------------------------------------------------------------ hooks
    def validate(self) -> None:
        """Check ``self.config``; raise ConfigError with a clear message on bad values."""

    def prepare(self, model: nn.Module) -> nn.Module:
        """Return the model this rule trains (the same module or a converted copy)."""
        return model

    def aux_parameters(self, model: nn.Module) -> dict[str, list[nn.Parameter]]:
        """Trainable tensors that are not forward weights, by group name (e.g. ``feedback``)."""
        return {}

    def param_groups(self, model: nn.Module, lr: float | None = None,
                     group_options: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """Parameter groups for ``torch.optim``: ``forward`` plus one per auxiliary group.

        ``group_options`` maps a group name to optimizer options for that group (for example
        ``{"feedback": {"lr": 1e-3}}``); unknown group names raise a ConfigError.
        """
        group_options = dict(group_options or {})
        aux = self.aux_parameters(model)
        aux_ids = {id(p) for ps in aux.values() for p in ps}
        forward = [p for p in model.parameters() if p.requires_grad and id(p) not in aux_ids]
        groups = [{"name": "forward", "params": forward}]
        groups += [{"name": k, "params": list(v)} for k, v in aux.items() if v]
        names = {g["name"] for g in groups} | set(aux)
        for key in group_options:
            if key not in names:
                raise ConfigError(
                    f"rule {self.name!r} has no parameter group {key!r}; groups: {', '.join(sorted(names))}"
                )
        for g in groups:
            if lr is not None:
                g["lr"] = lr
            g.update(group_options.get(g["name"], {}))
        return groups

    def train_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> StepResult:
        """Fill ``.grad`` of every trained tensor for the batch ``(x, y)`` (default: backprop)."""
        for p in model.parameters():
            p.grad = None
        output = model(x)
        loss = loss_fn(output, y)
        loss.backward()
        return StepResult(loss.detach(), output.detach())

    def after_step(self, model: nn.Module) -> None:
        """Called after the optimizer step (weight mirroring, transpose-feedback copies, ...)."""

    def feedback_pairs(self, model: nn.Module) -> list[FeedbackPair]:
        """Forward weights with their feedback tensors, for the probe's alignment metrics."""
        return []

    def forward_weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Named forward parameters whose rule update the probe compares with BP's gradient."""
        aux_ids = {id(p) for ps in self.aux_parameters(model).values() for p in ps}
        return {n: p for n, p in model.named_parameters() if p.requires_grad and id(p) not in aux_ids}

    def bp_gradients(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     loss_fn: LossFn) -> dict[str, torch.Tensor]:
        """True backprop gradients of the forward weights at the current parameters and batch.

        Feedback layers and DFA taps switch to exact backprop inside
        :func:`bioplausible.nn.exact_backward`, so this works for converted models too.
        """
        from ..nn.context import exact_backward

        params = self.forward_weights(model)
        with exact_backward(), torch.enable_grad():
            loss = loss_fn(model(x), y)
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        return {n: (g if g is not None else torch.zeros_like(p))
                for (n, p), g in zip(params.items(), grads)}

    def metrics(self, model: nn.Module) -> dict[str, float]:
        """Extra rule-specific numbers to log (e.g. a divergence indicator); default none."""
        return {}

    # ------------------------------------------------------------ randomness
    def set_seed(self, seed: int) -> None:
        """Seed the rule's own random streams (noise, random feedback magnitudes)."""
        self.seed = int(seed)
        self._generators.clear()

    def generator(self, device: torch.device | str) -> torch.Generator:
        """A per-device generator owned by the rule, seeded from :meth:`set_seed`'s value."""
        key = str(torch.device(device))
        if key not in self._generators:
            g = torch.Generator(device=device)
            g.manual_seed(self.seed + 7919)
            self._generators[key] = g
        return self._generators[key]

    def state_dict(self) -> dict[str, Any]:
        """Rule state that is not in the model (RNG streams, counters), for exact resume."""
        return {"seed": self.seed,
                "generators": {k: g.get_state() for k, g in self._generators.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state.get("seed", 0))
        self._generators.clear()
        for key, st in state.get("generators", {}).items():
            self.generator(key).set_state(st)

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.config.items())
        return f"{self.name}({opts})"

    def __repr__(self) -> str:
        return self.describe()
