"""The controls of Lansdell, Prakash & Kording 2020 (spec §1, §5; Table 2): ``matched``,
``bp-noise``, ``fa-noise`` and ``dae``. (``sg`` lives with ``np`` in :mod:`.rule`; BP with Adam is
the ``bp`` rule with ``optimizer: {name: adam}``.)

* ``matched`` — B receives W's update, ``ΔB = ΔWᵀ``: Kolen-Pollack (``kp``) with the decay λ
  defaulting to 0, as in the authors' code (``NPModel4_Matched``); ``decay > 0`` gives the
  paper's text ("weight decay is used to drive the matrices to be similar").
* ``bp-noise`` / ``fa-noise`` / ``matched-noise`` — BP / FA / ``matched`` trained on activities with zero-mean Gaussian noise of
  std ``c_h`` added to every hidden activity (the input of every Linear/Conv2d but the first)
  in training forward passes; evaluation and the probe's BP reference run without it.
* ``dae`` — BP on inputs with Gaussian noise of std ``input_noise`` (0.3, App. C.2), the
  denoising autoencoder; the target is unchanged (for an autoencoder: the clean input).
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
from torch import nn

from ...errors import ConfigError
from ...nn.context import exact_backward_enabled
from ..._registry import register
from ...core.rule import Rule, StepResult
from ..bp import BP
from ..feedback.feedback import FeedbackAlignment, KolenPollack


def _check_std(rule: Rule, key: str) -> None:
    v = rule.config[key]
    if not (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and v < float("inf")):
        raise ConfigError(f"rule {rule.name!r}: {key} must be a positive number (a noise std); got {v!r}")


@register("matched")
class Matched(KolenPollack):
    paper = "Lansdell, Prakash & Kording 2020 (control, after Akrout et al. 2019)"
    summary = "control: B receives W's update (KP), decay 0 by default as in the authors' code"
    defaults: ClassVar[dict[str, Any]] = {**KolenPollack.defaults, "decay": 0.0}


C_H_HELP = {"c_h": "std of the Gaussian noise added to every hidden activity in training passes"}


class _ActivationNoise:
    """Forward pre-hook: ``h ← h + c_h ξ`` on a layer's input in training passes."""

    def __init__(self, rule: Rule, std: float) -> None:
        self.rule, self.std = rule, float(std)

    def __call__(self, module: nn.Module, args):
        if not (module.training and torch.is_grad_enabled()) or exact_backward_enabled():
            return None
        h = args[0]
        xi = torch.randn(h.shape, generator=self.rule.generator(h.device), device=h.device, dtype=h.dtype)
        return (h + self.std * xi, *args[1:])


def add_activation_noise(rule: Rule, model: nn.Module, std: float | None = None) -> nn.Module:
    """Hook every Linear/Conv2d of ``model`` after the first to perturb its input in training
    passes, with std ``std`` (default the rule's ``c_h``) drawn from ``rule``'s generator. Any
    rule's prepared model can be given activation noise this way (e.g. ``matched`` + noise)."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    hook = _ActivationNoise(rule, rule.config["c_h"] if std is None else std)
    for layer in layers[1:]:
        layer.register_forward_pre_hook(hook)
    return model


@register("bp-noise")
class NoisyBP(BP):
    option_help: ClassVar[dict[str, str]] = C_H_HELP
    paper = "Lansdell, Prakash & Kording 2020 (control)"
    summary = "control: BP on hidden activities with Gaussian noise of std c_h"
    defaults: ClassVar[dict[str, Any]] = {"c_h": 0.01}

    def validate(self) -> None:
        _check_std(self, "c_h")

    def prepare(self, model: nn.Module, example: torch.Tensor | None = None) -> nn.Module:
        return add_activation_noise(self, copy.deepcopy(model))


@register("fa-noise")
class NoisyFA(FeedbackAlignment):
    option_help: ClassVar[dict[str, str]] = C_H_HELP
    paper = "Lansdell, Prakash & Kording 2020 (control)"
    summary = "control: FA on hidden activities with Gaussian noise of std c_h"
    defaults: ClassVar[dict[str, Any]] = {**FeedbackAlignment.defaults, "c_h": 0.01}

    def validate(self) -> None:
        super().validate()
        _check_std(self, "c_h")

    def prepare(self, model: nn.Module, example: torch.Tensor | None = None) -> nn.Module:
        return add_activation_noise(self, super().prepare(model, example))


@register("matched-noise")
class NoisyMatched(Matched):
    option_help: ClassVar[dict[str, str]] = C_H_HELP
    paper = "Lansdell, Prakash & Kording 2020 (control, Table 2a 'Matched' with noise)"
    summary = "control: matched (KP, decay 0) on hidden activities with Gaussian noise of std c_h"
    defaults: ClassVar[dict[str, Any]] = {**Matched.defaults, "c_h": 0.01}

    def validate(self) -> None:
        super().validate()
        _check_std(self, "c_h")

    def prepare(self, model: nn.Module, example: torch.Tensor | None = None) -> nn.Module:
        return add_activation_noise(self, super().prepare(model, example))


@register("dae")
class DenoisingBP(BP):
    paper = "Lansdell, Prakash & Kording 2020 (control); Vincent et al. 2008"
    summary = "control: BP on inputs with Gaussian noise of std input_noise (denoising autoencoder)"
    defaults: ClassVar[dict[str, Any]] = {"input_noise": 0.3}
    option_help: ClassVar[dict[str, str]] = {"input_noise": "std σ of the Gaussian noise added to the inputs"}

    def validate(self) -> None:
        _check_std(self, "input_noise")

    def train_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn) -> StepResult:
        xi = torch.randn(x.shape, generator=self.generator(x.device), device=x.device, dtype=x.dtype)
        return super().train_step(model, x + self.config["input_noise"] * xi, y, loss_fn)


__all__ = ["DenoisingBP", "Matched", "NoisyBP", "NoisyFA", "NoisyMatched", "add_activation_noise"]
