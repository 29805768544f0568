"""The rule contract: a learning rule is a gradient estimator that may also own state and apply
some of its updates itself (docs/contract.md is the map; this module is the reference).

For one batch, :meth:`Rule.train_step` writes an update direction into ``.grad`` of every tensor
the optimizer trains — the model's forward weights and the rule's own auxiliary tensors — and/or
changes tensors itself (ghost units change W at every Euler step; bidirectional FA steps two
learning phases in order). ``.grad`` holds a *descent* direction in the optimizer's sign
convention (``p ← p − lr·grad`` for SGD), so BP's ``.grad`` is ∂loss/∂p.

Two families share the contract (design.md §2):

* feedback-pathway rules convert ``nn.Linear``/``nn.Conv2d`` into layers whose backward pass
  is a :class:`~bioplausible.nn.pathway.FeedbackPathway` object the rule supplies;
* circuit rules (activation relaxation, ghost units, SAL) run batched neural dynamics over the
  layers of the same plain model in their own ``train_step``.

Life cycle, as driven by :func:`bioplausible.engine.trainer.fit` or a hand-written loop::

    rule = make("kp", decay=1e-4)
    model = rule.prepare(model, example=x[:2])   # once: may convert layers, create owned state
    opt = rule.build_optimizer(model, {"name": "sgd", "lr": 0.1})
    for x, y in batches:
        out = rule.train_step(model, x, y, loss)  # fills .grad (and may apply its own updates)
        opt.step()                               # steps what the rule did not step itself
        rule.after_step(model)                   # e.g. the weight-mirror phase

Tensors the rule owns beyond the user's model live in :attr:`Rule.owned` (an ``nn.Module``),
registered with :meth:`Rule.own` / :meth:`Rule.own_buffer`; they are checkpointed with
:meth:`Rule.state_dict` and move with :meth:`Rule.to`.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import ConfigError
from .context import exact_backward
from .optim import PhasedOptimizer, build_optimizer

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_NEUTRAL = {"name": None, "groups": None, "lr": None, "fused": None, "foreach": None}


@dataclass
class StepResult:
    """What one training step returns: the batch loss and the model output (both detached)."""

    loss: torch.Tensor
    output: torch.Tensor


@dataclass
class FeedbackPair:
    """A forward weight and the tensor that carries its error backward, for alignment metrics.

    ``feedback`` is in the layout of ``weight`` where the rule can give one (so for a Linear
    layer the backward signal is ``δ @ feedback``, i.e. the ``B_l`` of the notation, docs/notation.md, is ``feedback.T``);
    ``None`` for feedback that has no such form (DFA's ``(n_out, n_layer)`` matrices).
    """

    name: str
    weight: torch.Tensor
    feedback: torch.Tensor | None


@dataclass
class ParamEntry:
    """One trained tensor: its name, group, layer index and who applies its updates."""

    name: str
    param: torch.Tensor
    group: str
    layer: int | None
    self_applied: bool = False


class RuleState(nn.Module):
    """The tensors a rule owns (feedback, generative, ghost-unit, inter-stream weights; state).

    Dotted names become nested sub-modules, so ``own("V_f.0", t)`` appears in
    ``state_dict()`` as ``"V_f.0"``.
    """

    def _parent(self, name: str) -> tuple[nn.Module, str]:
        parts = name.split(".")
        if not all(parts):
            raise ValueError(f"owned tensor name {name!r} has an empty part")
        node: nn.Module = self
        for part in parts[:-1]:
            child = node._modules.get(part)
            if child is None:
                child = nn.Module()
                node.add_module(part, child)
            node = child
        return node, parts[-1]

    def add_parameter(self, name: str, tensor: torch.Tensor, requires_grad: bool) -> nn.Parameter:
        node, leaf = self._parent(name)
        param = tensor if isinstance(tensor, nn.Parameter) else nn.Parameter(tensor.detach())
        param.requires_grad_(requires_grad)
        if leaf in node._parameters or leaf in node._buffers:
            delattr(node, leaf)
        node.register_parameter(leaf, param)
        return param

    def add_buffer(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        node, leaf = self._parent(name)
        if leaf in node._parameters or leaf in node._buffers:
            delattr(node, leaf)
        node.register_buffer(leaf, tensor.detach())
        return node._buffers[leaf]

    def get(self, name: str) -> torch.Tensor:
        node, leaf = self._parent(name)
        value = node._parameters.get(leaf, node._buffers.get(leaf))
        if value is None:
            raise KeyError(f"the rule owns no tensor {name!r}")
        return value


class Rule:
    """Base class of all learning rules. Subclasses set ``defaults`` and override the hooks.

    ``defaults`` maps each hyperparameter to its default; unknown keyword arguments are
    rejected with a :class:`~bioplausible.errors.ConfigError` naming the accepted ones.

    Class attributes a rule may set:

    * ``updates_forward``: the rule changes the forward weights itself inside ``train_step``;
      the optimizer gets no forward group and optimizer options other than ``lr`` are refused;
    * ``phases``: group names per learning phase, applied in order within a batch by
      :meth:`step_phase` (e.g. ``(("forward",), ("generative",))``); empty: one phase;
    * ``recommended``: the training settings the rule needs to learn at its defaults, as a
      config mapping (``{"batch_size": 1, "model": {"activation": "sigmoid"}}``). A config takes
      them for every key the user did not set (:func:`bioplausible.engine.config.resolve`); a
      ``model`` section applies only when the user chose no model settings;
    * ``option_help``: one line per option (what it means); ``bioplausible explain RULE`` shows it
      beside the default and the accepted values, which are read from :meth:`validate`.
    """

    name: ClassVar[str] = "rule"
    family: ClassVar[str] = "exact"  # "exact" | "feedback" | "circuit"
    paper: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    updates_forward: ClassVar[bool] = False
    phases: ClassVar[tuple[tuple[str, ...], ...]] = ()
    recommended: ClassVar[dict[str, Any]] = {}
    option_help: ClassVar[dict[str, str]] = {}

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
        self.owned = RuleState()
        self._owned_meta: dict[str, tuple[str, int | None, bool]] = {}
        self._groups: dict[str, dict[str, Any]] = {}
        self._phase_optimizers: list[torch.optim.Optimizer] = []
        self._phases_stepped: set[int] = set()
        self.validate()

    # ------------------------------------------------------------------ hooks
    def validate(self) -> None:
        """Check ``self.config``; raise ConfigError with a clear message on bad values.

        Use :meth:`check_choice`, :meth:`check_number` and :meth:`check_bool` (one way of
        validating, one style of message for every rule).
        """

    # ------------------------------------------------------------- validation
    def check_choice(self, key: str, choices) -> None:
        """``config[key]`` must be one of ``choices``."""
        value = self.config[key]
        if value not in choices:
            raise ConfigError(f"rule {self.name!r}: {key}={value!r} is not valid; accepted: "
                              f"{', '.join(str(c) for c in choices)}")

    def check_number(self, key: str, low: float, high: float = math.inf, integer: bool = False,
                     positive: bool = False) -> None:
        """``config[key]`` must be a finite number (an int if ``integer``) in [low, high]
        (> low if ``positive``)."""
        value = self.config[key]
        ok = isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)
        ok = ok and math.isfinite(value)
        ok = ok and (value > low if positive else value >= low) and value <= high
        if not ok:
            what = "an integer" if integer else "a finite number"
            limits = f"{'>' if positive else '>='} {low}" + (f" and <= {high}" if high < math.inf else "")
            raise ConfigError(f"rule {self.name!r}: {key} must be {what} {limits}; got {value!r}")

    def check_bool(self, key: str) -> None:
        if not isinstance(self.config[key], bool):
            raise ConfigError(f"rule {self.name!r}: {key} must be true or false; got {self.config[key]!r}")

    def prepare(self, model: nn.Module, example: torch.Tensor | None = None) -> nn.Module:
        """Return the model this rule trains (the same module or a converted copy).

        ``example``: a small input batch on the model's device, for rules whose tensors depend
        on activation shapes; create owned tensors here, before the optimizer is built.
        """
        return model

    def aux_parameters(self, model: nn.Module) -> dict[str, list[nn.Parameter]]:
        """Trainable tensors on the *model* that are not forward weights, by group name.

        (Feedback tensors of converted layers; tensors in :attr:`owned` are listed by
        :meth:`own` instead.)
        """
        return {}

    def train_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> StepResult:
        """Fill ``.grad`` of every trained tensor for the batch ``(x, y)`` (default: backprop)."""
        for p in self._parameters_of(model):
            p.grad = None
        output = model(x)
        loss = loss_fn(output, y)
        loss.backward()
        return StepResult(loss.detach(), output.detach())

    def _parameters_of(self, model: nn.Module) -> list[torch.Tensor]:
        """``list(model.parameters())``, cached per model (walking the modules costs more than
        a batch-1 step's arithmetic); refreshed when the model's parameter count changes."""
        cache = self.__dict__.setdefault("_param_cache", {})
        hit = cache.get(id(model))
        if hit is None or hit[0] is not model or hit[2] != len(model._parameters) + len(model._modules):
            params = list(model.parameters())
            hit = cache[id(model)] = (model, params, len(model._parameters) + len(model._modules))
        return hit[1]

    def after_step(self, model: nn.Module) -> None:
        """Called after the optimizer step (weight mirroring, transpose-feedback copies, ...)."""

    def feedback_pairs(self, model: nn.Module) -> list[FeedbackPair]:
        """Forward weights with their feedback tensors, for the probe's alignment metrics."""
        return []

    def metrics(self, model: nn.Module) -> dict[str, float]:
        """Extra rule-specific numbers to log (e.g. a divergence indicator); default none.

        Both hooks below default to this; override one of them where the two moments differ.
        """
        return {}

    def probe_metrics(self, model: nn.Module) -> dict[str, float]:
        """Numbers for a probe record: called by the probe right after :meth:`train_step`, before
        the optimizer step (the state of the batch just computed)."""
        return self.metrics(model)

    def epoch_metrics(self, model: nn.Module) -> dict[str, float]:
        """Numbers for an epoch record (``rule/<name>``): called by the trainer after the epoch's
        last step, between steps."""
        return self.metrics(model)

    # ------------------------------------------------------------ owned state
    def own(self, name: str, tensor: torch.Tensor, *, group: str, layer: int | None = None,
            trainable: bool = True, self_applied: bool = False) -> nn.Parameter:
        """Register ``tensor`` as a parameter the rule owns, in parameter group ``group``.

        ``trainable``: an optimizer steps it from its ``.grad`` (in group ``group``, or
        ``group.layer`` when per-layer options are given); ``self_applied``: the rule changes it
        in place inside its step, at rates from :meth:`group_lr`, and no optimizer touches it.
        Neither: a fixed tensor that is still saved and restored.
        """
        if "." in group or not group:
            raise ValueError(f"group name {group!r} must be non-empty and contain no '.'")
        param = self.owned.add_parameter(name, tensor, requires_grad=trainable and not self_applied)
        self._owned_meta[name] = (group, layer, bool(self_applied))
        return param

    def own_buffer(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """Register non-parameter state (carried circuit state, counters as tensors)."""
        return self.owned.add_buffer(name, tensor)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Rule:
        """Move the owned tensors (floating point ones also to ``dtype``)."""
        self.owned.to(device=device, dtype=dtype) if dtype is not None else self.owned.to(device)
        return self

    # --------------------------------------------------------- parameter table
    def forward_weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Named forward parameters whose update the probe compares with BP's gradient."""
        aux_ids = {id(p) for ps in self.aux_parameters(model).values() for p in ps}
        return {n: p for n, p in model.named_parameters() if p.requires_grad and id(p) not in aux_ids}

    def param_table(self, model: nn.Module) -> list[ParamEntry]:
        """Every trained tensor with its group and layer (see docs/contract.md §4)."""
        aux = self.aux_parameters(model)
        aux_group = {id(p): g for g, ps in aux.items() for p in ps}
        layer_of: dict[int, int] = {}
        entries: list[ParamEntry] = []
        index = 0
        for mod_name, module in model.named_modules():
            own = [(n, p) for n, p in module.named_parameters(recurse=False)
                   if p.requires_grad and id(p) not in layer_of]
            if not own:
                continue
            has_forward = any(id(p) not in aux_group for _, p in own)
            for n, p in own:
                layer_of[id(p)] = index
                full = f"{mod_name}.{n}" if mod_name else n
                entries.append(ParamEntry(full, p, aux_group.get(id(p), "forward"), index,
                                          self_applied=id(p) not in aux_group and self.updates_forward))
            index += 1 if has_forward else 0
        for name, (group, layer, self_applied) in self._owned_meta.items():
            p = self.owned.get(name)
            if self_applied or p.requires_grad:
                entries.append(ParamEntry(name, p, group, layer, self_applied))
        return entries

    def param_groups(self, model: nn.Module, lr: float | None = None,
                     group_options: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """Parameter groups for ``torch.optim``: ``forward`` plus one per auxiliary group.

        ``group_options`` maps a group name (``"feedback"``) or a group and layer
        (``"forward.1"``) to optimizer options; a layer key splits that layer's tensors into
        their own torch group. Groups of tensors the rule applies itself appear with an empty
        ``params`` list and ``self_applied: True``: they carry the learning rate
        (:meth:`group_lr`, and any LR schedule) but the optimizer never changes a tensor in them.
        Unknown group or layer names raise a ConfigError.
        """
        group_options = dict(group_options or {})
        entries = self.param_table(model)
        order: list[str] = []
        layers: dict[str, set[int]] = {}
        for e in entries:
            if e.group not in layers:
                order.append(e.group)
                layers[e.group] = set()
            if e.layer is not None:
                layers[e.group].add(e.layer)
        for group in self._declared_groups():
            if group not in layers:
                order.append(group)
                layers[group] = set()
        for key, opts in group_options.items():
            base, _, layer = str(key).partition(".")
            if base not in layers:
                raise ConfigError(f"rule {self.name!r} has no parameter group {base!r}; groups: "
                                  f"{', '.join(order) or 'none'}")
            if layer and (not layer.isdigit() or int(layer) not in layers[base]):
                raise ConfigError(f"parameter group {base!r} has no layer {layer!r}; layers: "
                                  f"{', '.join(str(i) for i in sorted(layers[base])) or 'none'}")
            if not isinstance(opts, dict):
                raise ConfigError(f"optimizer.groups.{key} must map option names to values, got {opts!r}")
        groups: list[dict[str, Any]] = []
        for base in order:
            mine = [e for e in entries if e.group == base]
            split = sorted(int(k.partition(".")[2]) for k in group_options
                           if k.partition(".")[0] == base and k.partition(".")[2])
            buckets = [(base, [e for e in mine if e.layer not in split])]
            buckets += [(f"{base}.{i}", [e for e in mine if e.layer == i]) for i in split]
            for gname, members in buckets:
                if not members and gname == base and split:
                    continue
                self_applied = bool(members) and all(e.self_applied for e in members)
                if any(e.self_applied for e in members) and not self_applied:
                    raise ConfigError(f"group {gname!r} mixes tensors the rule updates itself with "
                                      f"optimizer-stepped ones; give them different group names")
                group: dict[str, Any] = {"name": gname,
                                         "params": [] if self_applied else [e.param for e in members]}
                if self_applied or (not members and base in self._declared_groups()):
                    group["self_applied"] = True
                if lr is not None:
                    group["lr"] = lr
                group.update(group_options.get(base, {}))
                if gname != base:
                    group.update(group_options.get(gname, {}))
                groups.append(group)
        self._groups = {g["name"]: g for g in groups}
        return groups

    def _declared_groups(self) -> list[str]:
        return [g for phase in self.phases for g in phase]

    def group_lr(self, group: str, layer: int | None = None) -> float:
        """The current learning rate of ``group`` (or of its layer), as the optimizer holds it.

        Rules that apply updates themselves read their rates here, so per-group options and
        LR schedules reach them. Call after :meth:`param_groups` / :meth:`build_optimizer`.
        """
        if layer is not None and f"{group}.{layer}" in self._groups:
            return float(self._groups[f"{group}.{layer}"]["lr"])
        if group not in self._groups:
            raise ConfigError(f"rule {self.name!r}: no parameter group {group!r} was built; "
                              f"build the optimizer with rule.build_optimizer(model, options)")
        return float(self._groups[group]["lr"])

    # --------------------------------------------------------------- optimizers
    def build_optimizer(self, model: nn.Module, options: dict[str, Any]) -> torch.optim.Optimizer:
        """The optimizer for this rule: one torch optimizer, or one per phase behind one object.

        ``options``: ``{"name": "sgd", "lr": 0.1, "momentum": 0.9, "groups": {...}}`` as in the
        config's ``optimizer`` section.
        """
        options = dict(options)
        groups = self.param_groups(model, options.get("lr"), options.get("groups") or {})
        self._check_self_applied_options(groups, options)
        self._phases_stepped = set()
        if not self.phases:
            self._phase_optimizers = []
            return build_optimizer(groups, options)
        parts: list[list[dict[str, Any]]] = [[] for _ in self.phases]
        rest: list[dict[str, Any]] = []
        for g in groups:
            base = g["name"].partition(".")[0]
            idx = next((i for i, phase in enumerate(self.phases) if base in phase), None)
            (rest if idx is None else parts[idx]).append(g)
        parts[0] = rest + parts[0]
        self._phase_optimizers = [build_optimizer(p or [{"params": [], "lr": options.get("lr", 0.0)}],
                                                  options) for p in parts]
        return PhasedOptimizer(self._phase_optimizers, self._phases_stepped)

    def _check_self_applied_options(self, groups: list[dict[str, Any]], options: dict[str, Any]) -> None:
        applied = [g for g in groups if g.get("self_applied")]
        if not applied:
            return
        stepped = [g for g in groups if not g.get("self_applied")]
        keys = set()
        for g in applied:
            keys |= {k for k in g if k not in ("name", "params", "lr", "self_applied")}
        if not stepped:  # nothing for the optimizer: every optimizer-wide option is meaningless
            keys |= {k for k, v in options.items() if k not in _NEUTRAL and v not in (0, 0.0, False, None)}
        if keys:
            names = ", ".join(g["name"] for g in applied)
            raise ConfigError(
                f"rule {self.name!r} applies its own updates to {names}: optimizer option(s) "
                f"{', '.join(sorted(keys))} cannot apply there; set only the learning rate "
                f"(optimizer.lr or optimizer.groups.<group>.lr) or the rule's own options")

    def step_phase(self, index: int) -> None:
        """Apply learning phase ``index`` now (its tensors' ``.grad`` must be filled)."""
        if not self._phase_optimizers:
            raise ConfigError(f"rule {self.name!r}: build the optimizer with rule.build_optimizer() "
                              f"before training a rule with learning phases")
        self._phase_optimizers[index].step()
        self._phases_stepped.add(index)

    # ------------------------------------------------------------ BP reference
    def bp_gradients(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     loss_fn: LossFn) -> dict[str, torch.Tensor]:
        """True backprop gradients of the forward weights at the current parameters and batch.

        Feedback layers and DFA taps switch to exact backprop inside
        :func:`bioplausible.core.context.exact_backward`, so this works for converted models too.
        A forward weight the loss does not depend on gets a zero gradient.
        """
        params = self.forward_weights(model)
        with exact_backward(), torch.enable_grad():
            loss = loss_fn(model(x), y)
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        return {n: (g if g is not None else torch.zeros_like(p))
                for (n, p), g in zip(params.items(), grads)}

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
        """Rule state outside the model: RNG streams, owned tensors, counters (exact resume)."""
        return {"seed": self.seed,
                "generators": {k: g.get_state() for k, g in self._generators.items()},
                "owned": self.owned.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state.get("seed", 0))
        self._generators.clear()
        for key, st in state.get("generators", {}).items():
            self.generator(key).set_state(st)
        owned = state.get("owned") or {}
        if owned or len(self.owned.state_dict()):
            self.owned.load_state_dict(owned)

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.config.items())
        return f"{self.name}({opts})"

    def __repr__(self) -> str:
        return self.describe()


def call_prepare(rule: Rule, model: nn.Module, example: torch.Tensor | None) -> nn.Module:
    """``rule.prepare(model, example=...)``, also for rules whose prepare takes no example."""
    params = inspect.signature(rule.prepare).parameters
    if "example" in params:
        return rule.prepare(model, example=example)
    return rule.prepare(model)

