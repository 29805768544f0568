"""The controls of Lansdell, Prakash & Kording 2020 (Table 2): ``matched``,
``bp-noise``, ``fa-noise`` and ``dae``. (``sg`` lives with ``np`` in :mod:`.rule`; BP with Adam is
the ``bp`` rule with ``optimizer: {name: adam}``.)

* ``matched`` — B receives W's update, ``ΔB = ΔWᵀ``: Kolen-Pollack (``kp``) with the decay λ
  defaulting to 0, as in the authors' code (``NPModel4_Matched``); ``decay > 0`` gives the
  paper's text ("weight decay is used to drive the matrices to be similar").
* ``bp-noise`` / ``fa-noise`` / ``dfa-noise`` / ``matched-noise`` — BP / FA / DFA / ``matched`` trained on activities with zero-mean Gaussian noise of
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

from ...core.context import exact_backward_enabled
from ...core.rule import Rule, StepResult
from ...errors import ConfigError
from ..bp import BP
from ..feedback.dfa import DirectFeedbackAlignment
from ..feedback.feedback import FeedbackAlignment, KolenPollack
from ..registry import register


def _check_std(rule: Rule, key: str) -> None:
    v = rule.config[key]
    if not (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and v < float("inf")):
        raise ConfigError(f"rule {rule.name!r}: {key} must be a positive number (a noise std); got {v!r}")


@register("matched")
class Matched(KolenPollack):
    """Matched control: B receives W's update, ``ΔB = ΔWᵀ`` (Kolen-Pollack with decay 0).

    The control of Lansdell, Prakash & Kording 2020 (Table 2a, after Akrout et al. 2019); decay 0
    as in the authors' code, ``decay > 0`` the paper's text.

    Options: as ``kp`` — ``decay`` (0), ``feedback_init``, ``learn_unused``, ``decay_in``.

    Models: any model of ``nn.Linear`` / ``nn.Conv2d`` layers, as ``fa``.
    """

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
    """BP on noisy activities: the control for the noise node perturbation injects.

    Zero-mean Gaussian noise of std ``c_h`` is added to every hidden activity (the input of every
    Linear/Conv2d but the first) in training forward passes, and BP trains on them (Lansdell,
    Prakash & Kording 2020, Table 2a); evaluation and the probe's reference run without noise.

    Options: ``c_h`` — noise std (0.01).

    Models: any model of ``nn.Linear`` / ``nn.Conv2d`` layers.
    """

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
    """FA on noisy activities (control): ``fa`` with Gaussian noise of std ``c_h`` on hidden activities.

    Lansdell, Prakash & Kording 2020, Table 2a.

    Options: ``c_h`` — noise std (0.01); ``feedback_init`` — as ``fa``.

    Models: any model of ``nn.Linear`` / ``nn.Conv2d`` layers.
    """

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
    """Matched on noisy activities (control): ``matched`` with Gaussian noise of std ``c_h``.

    Lansdell, Prakash & Kording 2020, Table 2a ("Matched" with noise).

    Options: ``c_h`` — noise std (0.01); ``decay``, ``feedback_init``, ``learn_unused``,
    ``decay_in`` — as ``kp``.

    Models: any model of ``nn.Linear`` / ``nn.Conv2d`` layers.
    """

    option_help: ClassVar[dict[str, str]] = C_H_HELP
    paper = "Lansdell, Prakash & Kording 2020 (control, Table 2a 'Matched' with noise)"
    summary = "control: matched (KP, decay 0) on hidden activities with Gaussian noise of std c_h"
    defaults: ClassVar[dict[str, Any]] = {**Matched.defaults, "c_h": 0.01}

    def validate(self) -> None:
        super().validate()
        _check_std(self, "c_h")

    def prepare(self, model: nn.Module, example: torch.Tensor | None = None) -> nn.Module:
        return add_activation_noise(self, super().prepare(model, example))


@register("dfa-noise")
class NoisyDFA(DirectFeedbackAlignment):
    """DFA-with-noise control: DFA with Gaussian noise on the hidden activities.

    Every hidden activity gets noise of std ``c_h`` in the forward pass, as the noisy cells of
    Lansdell, Prakash & Kording 2020, Table 2b; the update is DFA's, δ_l = (B_l e) ⊙ f′(a_l)
    (Nøkland 2016).

    Options: ``c_h`` — activity noise std (0.01); DFA's options as for ``dfa``.

    Models: MLPs and CNNs made of ``nn.Linear`` / ``nn.Conv2d`` layers (as ``dfa``).
    """

    paper = "Lansdell, Prakash & Kording 2020 (control, Table 2b 'DFA' with noise)"
    summary = "control: DFA on hidden activities with Gaussian noise of std c_h"
    defaults: ClassVar[dict[str, Any]] = {**DirectFeedbackAlignment.defaults, "c_h": 0.01}

    def validate(self) -> None:
        super().validate()
        _check_std(self, "c_h")

    def prepare(self, model: nn.Module, example: torch.Tensor | None = None) -> nn.Module:
        return add_activation_noise(self, super().prepare(model, example))


@register("dae")
class DenoisingBP(BP):
    """Denoising autoencoder (DAE) control: BP on inputs with Gaussian noise.

    Noise of std ``input_noise`` is added to the inputs, the target is unchanged (for an
    autoencoder the clean input; Vincent et al. 2008; Lansdell, Prakash & Kording 2020, App. C.2).

    Options: ``input_noise`` — noise std (0.3).

    Models: any model (typically the ``autoencoder``).
    """

    paper = "Lansdell, Prakash & Kording 2020 (control); Vincent et al. 2008"
    summary = "control: BP on inputs with Gaussian noise of std input_noise (denoising autoencoder)"
    defaults: ClassVar[dict[str, Any]] = {"input_noise": 0.3}
    option_help: ClassVar[dict[str, str]] = {"input_noise": "std σ of the Gaussian noise added to the inputs"}

    def validate(self) -> None:
        _check_std(self, "input_noise")

    def train_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn) -> StepResult:
        xi = torch.randn(x.shape, generator=self.generator(x.device), device=x.device, dtype=x.dtype)
        return super().train_step(model, x + self.config["input_noise"] * xi, y, loss_fn)


__all__ = ["DenoisingBP", "Matched", "NoisyBP", "NoisyDFA", "NoisyFA", "NoisyMatched", "add_activation_noise"]
