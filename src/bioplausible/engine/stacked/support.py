"""Which runs can stack, and the stacked step of each rule.

A group of runs stacks when its rule has a stacked step here (:data:`STACKED`: bp, fa, usf, brsf,
frsf, kp, matched, wm, dfa, np, np-dfa, sg, sg-dfa, bfa, bdfa, ar, sal, ghost-ma, ghost-ma-prime,
ghost-mb and the noise controls bp-noise, fa-noise, matched-noise, dfa-noise), its model is a plain MLP
(``[Flatten,] (Linear[, activation])*`` with sigmoid, tanh, ReLU or identity; a Linear with
nothing after it has the identity), the optimizer is SGD
without momentum (per-run learning rates, parameter groups, weight decay and LR schedules are
fine; probes are taken run by run; the ghost rules apply their own rates ``eta_w`` / ``eta_v``,
and the noise std ``c_h`` of node perturbation and the noise controls may differ between the runs of a stack, see
:data:`PER_RUN_OPTIONS`), and the task is single-label classification or reconstruction.
Otherwise :func:`config_reason` / :func:`model_reason` say why in one line and the runs train
one after another.
"""

from __future__ import annotations

from typing import Any

from .bidirectional import StackedBDFA, StackedBFA
from .ghost import StackedGhost, ghost_reason
from .nodepert import StackedNP, StackedNPDFA, StackedSG, StackedSGDFA
from .relaxation import StackedAR
from .sal import StackedSAL
from .steps import (
    StackedDFA,
    StackedFA,
    StackedKP,
    StackedNoisyBP,
    StackedNoisyDFA,
    StackedNoisyFA,
    StackedNoisyKP,
    StackedRule,
    StackedSign,
    StackedWM,
)

#: rule name -> stacked step class
STACKED: dict[str, type[StackedRule]] = {
    "bp": StackedRule, "fa": StackedFA, "usf": StackedSign, "brsf": StackedSign, "frsf": StackedSign,
    "kp": StackedKP, "matched": StackedKP, "wm": StackedWM, "dfa": StackedDFA, "np": StackedNP, "np-dfa": StackedNPDFA,
    "sg": StackedSG, "sg-dfa": StackedSGDFA, "bfa": StackedBFA, "bdfa": StackedBDFA, "ar": StackedAR,
    "sal": StackedSAL, "ghost-ma": StackedGhost, "ghost-ma-prime": StackedGhost, "ghost-mb": StackedGhost,
    "bp-noise": StackedNoisyBP, "fa-noise": StackedNoisyFA, "matched-noise": StackedNoisyKP,
    "dfa-noise": StackedNoisyDFA,
}

#: rule name -> rule options that may differ between the runs of one stack (each run's own value
#: is used): the rates the ghost rules apply themselves, node perturbation's noise std ``c_h``.
#: Runs differing in them (and in seed and the optimizer's rates) share a stack.
PER_RUN_OPTIONS: dict[str, tuple[str, ...]] = {name: cls.per_run_options for name, cls in STACKED.items()
                                               if cls.per_run_options}


def stackable_rules() -> list[str]:
    return sorted(STACKED)


def config_reason(config) -> str | None:
    """Why runs of ``config`` cannot stack (one line), or ``None``."""
    rule = config["rule"]["name"]
    if rule not in STACKED:
        return f"rule {rule!r} has no stacked step (stacked rules: {', '.join(stackable_rules())})"
    opt = config["optimizer"]
    if str(opt.get("name", "sgd")).lower() != "sgd":
        return f"the optimizer is {opt.get('name')!r}; stacked runs step plain SGD"
    for key in ("momentum", "nesterov", "maximize"):
        if opt.get(key) or any(isinstance(g, dict) and g.get(key) for g in (opt.get("groups") or {}).values()):
            return f"the optimizer uses {key}; stacked runs step plain SGD without it"
    if config["dtype"] not in ("float32", "float64"):
        return f"dtype {config['dtype']} is not stacked (float32, float64)"
    options = config.rule_options()
    if rule == "sal" and options.get("timing", "simultaneous") != "simultaneous":
        return "sal's timing='feedback_first' has no stacked step (simultaneous has)"
    if rule == "ar" and options.get("graph"):
        return "ar's graph mode (any fx-traceable model) has no stacked step; its MLP path has"
    if rule in ("bfa", "bdfa") and options.get("max_norm") is not None:
        return f"{rule}'s max_norm has no stacked step"
    if rule in ("np", "np-dfa", "sg", "sg-dfa") and options.get("solver", "sgd") != "sgd":
        return "node perturbation's ridge solver has no stacked step (solver sgd has)"
    if rule.startswith("ghost-"):
        return ghost_reason(rule, options, config)
    return None


def model_reason(trainers: list) -> str | None:
    """Why the built runs cannot stack (one line), or ``None``."""
    from .mlp import mlp_layers

    lead = trainers[0]
    if lead.task == "multilabel":
        return "multi-label tasks are not stacked"
    for t in trainers:
        plan = mlp_layers(t.model)
        if isinstance(plan, str):
            return plan
        if len({p.dtype for p in t.model.parameters()}) != 1:
            return "the model mixes dtypes"
    if lead.rule.name in ("bfa", "bdfa") and lead.train_split.y.is_floating_point():
        return f"{lead.rule.name} with soft (float) labels takes the rule's sample-by-sample path"
    if lead.rule.name in ("np", "np-dfa") and getattr(lead.rule, "_plan", None) is None:
        return "node perturbation takes its general path on this model"
    if lead.rule.name in ("dfa", "dfa-noise") and lead.rule.config.get("output_layer") == "dfa":
        act = plan[1][-1][0]
        if act != "identity":
            return "dfa with output_layer='dfa' and an output nonlinearity is not stacked"
    return None


def make_stack(trainers: list) -> StackedRule:
    """The stacked step of the runs held by ``trainers`` (built and prepared)."""
    from ..runtime import keep_freed_memory

    keep_freed_memory()  # a stacked step's large temporaries would otherwise be fresh pages every step
    lead = trainers[0]
    cls = STACKED[lead.rule.name]
    return cls([t.model for t in trainers], [t.rule for t in trainers], [t.optimizer for t in trainers], lead.loss)


def stack_from(models: list, rules: list, optimizers: list, loss_fn: Any) -> StackedRule:
    """The stacked step for prepared ``models`` with their ``rules`` and ``optimizers``."""
    return STACKED[rules[0].name](models, rules, optimizers, loss_fn)


__all__ = ["PER_RUN_OPTIONS", "STACKED", "config_reason", "make_stack", "model_reason", "stack_from", "stackable_rules"]
