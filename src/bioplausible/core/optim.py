"""Optimizers for a rule's parameter groups: building (with option checks), phases, LR schedules.

:func:`build_optimizer` turns the config's ``optimizer`` section into a ``torch.optim`` optimizer;
:class:`PhasedOptimizer` puts one optimizer per learning phase behind one object
(:meth:`bioplausible.core.rule.Rule.build_optimizer`); :func:`build_schedule` the per-epoch LR
schedule.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable
from typing import Any

import torch

from ..errors import ConfigError, UnknownNameError

# Options that must be >= 0 (when present) for every torch optimizer that takes them.
_NON_NEGATIVE = {"lr", "momentum", "dampening", "weight_decay", "eps", "alpha", "lr_decay",
                 "initial_accumulator_value", "rho", "lambd", "t0", "momentum_decay"}


def optimizer_class(name: str) -> type:
    """``"adam"`` -> ``torch.optim.Adam`` (case-insensitive); UnknownNameError otherwise."""
    classes = {n.lower(): getattr(torch.optim, n) for n in dir(torch.optim)
               if isinstance(getattr(torch.optim, n), type)
               and issubclass(getattr(torch.optim, n), torch.optim.Optimizer) and n != "Optimizer"}
    if str(name).lower() not in classes:
        raise UnknownNameError(f"unknown optimizer {name!r}; choose from {', '.join(sorted(classes))}")
    return classes[str(name).lower()]


def check_optimizer_options(section: dict[str, Any]) -> None:
    """Names, types and ranges of the optimizer's options, top level and per group.

    An option the optimizer does not take (``momentun``) or a non-numeric/negative rate is a
    ConfigError here, before any run directory is written, rather than an error at the first
    step or an option silently ignored.
    """
    cls = optimizer_class(section.get("name", "sgd"))
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "params"}
    groups = section.get("groups") or {}
    if not isinstance(groups, dict):
        raise ConfigError("optimizer.groups must map a group name to options, e.g. {feedback: {lr: 0.01}}")
    tables = [("optimizer", {k: v for k, v in section.items() if k not in ("name", "groups")})]
    for group, options in groups.items():
        if not isinstance(options, dict):
            raise ConfigError(f"optimizer.groups.{group} must map options to values, e.g. {{lr: 0.01}}, "
                              f"got {options!r}")
        tables.append((f"optimizer.groups.{group}", options))
    for where, options in tables:
        for key, value in options.items():
            if key not in accepted:
                close = difflib.get_close_matches(key, sorted(accepted), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"{where}.{key}: {cls.__name__} has no option {key!r}{hint}; "
                                  f"options: {', '.join(sorted(accepted))}")
            values = value if isinstance(value, (list, tuple)) else [value]
            if key == "betas" and not (isinstance(value, (list, tuple)) and len(value) == 2
                                       and all(_is_number(v) and 0 <= v < 1 for v in value)):
                raise ConfigError(f"{where}.betas must be two numbers in [0, 1), got {value!r}")
            if key in _NON_NEGATIVE:
                if not all(_is_number(v) for v in values):
                    raise ConfigError(f"{where}.{key} must be a number, got {value!r}")
                if any(v < 0 for v in values):
                    raise ConfigError(f"{where}.{key} must be >= 0, got {value!r}")
                if key == "lr" and where == "optimizer" and any(v == 0 for v in values):
                    raise ConfigError(f"{where}.lr must be positive, got {value!r}")  # 0 in a group: frozen


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def build_optimizer(params: list[dict[str, Any]], options: dict[str, Any]) -> torch.optim.Optimizer:
    """``{"name": "sgd", "lr": 0.1, "momentum": 0.9}`` -> ``torch.optim.SGD(params, ...)``.

    The implementation is chosen per dtype and device: the fused kernel (one kernel per step)
    where it updates every element correctly — CUDA, or float32/float64 on the CPU — and the
    per-tensor loop otherwise. (In this torch the fused CPU SGD updates only a few elements of
    float16/bfloat16 tensors, so a half-precision run would silently train nothing.)
    """
    check_optimizer_options(options)
    opts = {k: v for k, v in options.items() if k not in ("name", "groups")}
    name = str(options.get("name", "sgd"))
    cls = optimizer_class(name)
    tensors = [p for g in params for p in g["params"]]
    if opts.get("fused") and not _fused_ok(cls, tensors):
        raise ConfigError(f"optimizer {name!r}: fused=True does not update float16/bfloat16 tensors on the "
                          f"CPU correctly in this torch (SGD); remove the option")
    if "fused" not in opts and "foreach" not in opts and _fused_ok(cls, tensors) \
            and all(t.is_contiguous() for t in tensors):
        opts["fused"] = True  # same update up to rounding; makes KP's decay nearly free
    _check_half_eps(cls, name, opts, tensors)
    try:
        optimizer = cls(params, **opts)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"optimizer {name!r}: {exc}") from None
    if opts.get("fused"):
        optimizer.register_step_pre_hook(_contiguous_grads)
    return optimizer


def _contiguous_grads(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    """Fused CPU SGD/Adam in this torch mis-step a parameter whose ``.grad`` (or which itself)
    is not contiguous — a transposed gradient a rule wrote moves the wrong entries. Make every
    gradient contiguous before a fused step (a no-op check for the usual contiguous ones)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            g = p.grad
            if g is not None and not g.is_contiguous():
                p.grad = g.contiguous()


_FUSABLE = {torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW}


def _check_half_eps(cls: type, name: str, opts: dict[str, Any], tensors: list[torch.Tensor]) -> None:
    """An adaptive optimizer stepping float16 tensors in float16 needs an eps float16 can hold."""
    if opts.get("fused") or not any(t.dtype == torch.float16 for t in tensors):
        return
    default = inspect.signature(cls.__init__).parameters.get("eps")
    if default is None:
        return
    eps = float(opts.get("eps", default.default))
    tiny = torch.finfo(torch.float16).tiny
    if eps < tiny:
        raise ConfigError(f"optimizer {name!r}: eps={eps:g} is below float16's smallest normal number "
                          f"({tiny:.2g}), so the step divides by zero; set optimizer.eps to 1e-4 or use "
                          f"dtype bfloat16/float32")


def _fused_ok(cls: type, tensors: list[torch.Tensor]) -> bool:
    """Whether ``cls(..., fused=True)`` updates every tensor in ``tensors`` correctly."""
    if cls not in _FUSABLE or not tensors:
        return False
    devices = {t.device.type for t in tensors}
    if len(devices) != 1 or devices.pop() not in ("cpu", "cuda"):
        return False
    half_broken = cls is torch.optim.SGD and tensors[0].device.type == "cpu"
    return all(t.is_floating_point() and not (half_broken and t.dtype in (torch.float16, torch.bfloat16))
               for t in tensors)


def build_schedule(optimizer: torch.optim.Optimizer, options: dict[str, Any], epochs: int):
    """Per-epoch LR schedule: none, step, multistep, exponential or cosine."""
    opts = {k: v for k, v in options.items() if k != "name"}
    name = str(options.get("name", "none")).lower()
    sched = torch.optim.lr_scheduler
    table: dict[str, Callable[..., Any]] = {
        "step": sched.StepLR, "multistep": sched.MultiStepLR, "exponential": sched.ExponentialLR,
        "cosine": lambda o, **kw: sched.CosineAnnealingLR(o, **{"T_max": epochs, **kw}),
    }
    if name == "none":
        if opts:
            raise ConfigError(f"schedule 'none' takes no options, got {sorted(opts)}")
        return None
    if name not in table:
        raise UnknownNameError(f"unknown schedule {name!r}; choose from none, {', '.join(table)}")
    try:
        return table[name](optimizer, **opts)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"schedule {name!r}: {exc}") from None


class PhasedOptimizer(torch.optim.Optimizer):
    """One optimizer per learning phase behind the ``torch.optim.Optimizer`` interface.

    ``param_groups`` is the union of the phases' groups (the same dicts, so LR schedules reach
    every phase); :meth:`step` steps the phases the rule did not step itself during the batch.
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer], stepped: set[int]) -> None:
        # The phases own the state; this object only routes (no Optimizer.__init__ on purpose).
        self.optimizers = optimizers
        self._stepped = stepped
        self.defaults = dict(optimizers[0].defaults)
        self.param_groups = [g for opt in optimizers for g in opt.param_groups]
        self.state = {}  # type: ignore[assignment]
        self._optimizer_step_pre_hooks = {}  # type: ignore[assignment]
        self._optimizer_step_post_hooks = {}  # type: ignore[assignment]

    def step(self, closure=None):  # type: ignore[override]
        for i, opt in enumerate(self.optimizers):
            if i not in self._stepped:
                opt.step()
        self._stepped.clear()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {"phases": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        for opt, st in zip(self.optimizers, state_dict["phases"]):
            opt.load_state_dict(st)


__all__ = ["PhasedOptimizer", "build_optimizer", "build_schedule", "check_optimizer_options",
           "optimizer_class"]
