"""What a rule accepts and where it runs, read from the rule classes themselves.

* :func:`options` — every option of a rule with its default, the values :meth:`Rule.validate`
  accepts (recorded while it validates the defaults through :meth:`Rule.check_choice`,
  :meth:`Rule.check_number` and :meth:`Rule.check_bool`) and its meaning (:attr:`Rule.option_help`);
* :func:`support` — whether a rule trains an MLP, a CNN (LeNet-5) and a residual network with
  BatchNorm, found by preparing each model and taking one training step on a tiny batch;
* :func:`explain` and :func:`support_markdown` render them for ``bioplausible explain RULE`` and
  for the README's table (``python -m bioplausible.engine.rule_info`` prints it).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

from ..errors import UserError


@contextlib.contextmanager
def _recording(log: dict[str, str]) -> Iterator[None]:
    """Patch the Rule's check helpers so that each records what it accepts."""
    from ..core.rule import Rule

    saved = Rule.check_choice, Rule.check_number, Rule.check_bool

    def choice(self, key, choices):
        log.setdefault(key, "one of " + ", ".join(str(c) for c in choices))
        return saved[0](self, key, choices)

    def number(self, key, low, high=math.inf, integer=False, positive=False):
        kind = "integer" if integer else "number"
        text = f"{kind} {'>' if positive else '>='} {low:g}" + (f" and <= {high:g}" if high < math.inf else "")
        log.setdefault(key, text)
        return saved[1](self, key, low, high, integer, positive)

    def boolean(self, key):
        log.setdefault(key, "true or false")
        return saved[2](self, key)

    Rule.check_choice, Rule.check_number, Rule.check_bool = choice, number, boolean
    try:
        yield
    finally:
        Rule.check_choice, Rule.check_number, Rule.check_bool = saved


def rule_class(name: str) -> type:
    from ..rules.registry import RULES, list_rules

    list_rules()
    return RULES.get(name)


def _comments(cls: type) -> dict[str, str]:
    """Inline comments of the lines that declare an option (``"eta_x": 0.1,  # η_x in (0, 1]``) in
    the modules of the rule's classes: the meaning as its author wrote it beside the default."""
    import inspect
    import re

    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        module = inspect.getmodule(klass)
        if module is None or not module.__name__.startswith("bioplausible"):
            continue
        try:
            source = inspect.getsource(module)
        except (OSError, TypeError):
            continue
        for m in re.finditer(r'^\s*"(\w+)":[^#\n]*#\s*(.+)$', source, re.MULTILINE):
            found.setdefault(m.group(1), m.group(2).strip())
        # the docstrings' "``key``: meaning" / "Option ``key``: meaning" lines
        for doc in (module.__doc__ or "", klass.__doc__ or ""):
            for m in re.finditer(r"``(\w+)``(?: \([^)]*\))?(:| =| s =) ([^;\n]+)", doc):
                text = m.group(3).strip().rstrip(" —-")
                found.setdefault(m.group(1), text if m.group(2) == ":" else f"{m.group(2).strip(' :')} {text}")
    return found


def options(cls_or_name: Any) -> list[dict[str, Any]]:
    """``[{"name", "default", "accepts", "help"}]`` for every option of a rule, in declaration order.

    ``accepts`` is recorded from :meth:`Rule.validate`; ``help`` is :attr:`Rule.option_help`, else
    the comment beside the option's default in the rule's source.
    """
    cls = rule_class(cls_or_name) if isinstance(cls_or_name, str) else cls_or_name
    accepts: dict[str, str] = {}
    with _recording(accepts):
        cls()  # validates the defaults, recording each check
    declared: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass's declaration wins over its base's
        declared.update(klass.__dict__.get("option_help") or {})
    helps = {**_comments(cls), **declared}
    return [{"name": k, "default": v, "accepts": accepts.get(k, ""), "help": helps.get(k, "")}
            for k, v in cls.defaults.items()]


def option_lines(cls_or_name: Any) -> list[str]:
    rows = options(cls_or_name)
    if not rows:
        return ["(no options)"]
    width = max(len(r["name"]) for r in rows)
    lines = []
    for r in rows:
        text = f"{r['name']:{width}s} = {r['default']!r}"
        if r["accepts"]:
            text += f"  [{r['accepts']}]"
        if r["help"]:
            text += f"  {r['help']}"
        lines.append(text)
    return lines


def _flat(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        out = []
        for k, v in node.items():
            out += _flat(v, f"{prefix}{k}.")
        return out
    return [f"{prefix.rstrip('.')}={node}"]


def explain(name: str) -> str:
    """The text of ``bioplausible explain NAME``."""
    cls = rule_class(name)
    doc = (cls.__doc__ or "").strip()
    lines = [f"{cls.name}: {cls.summary}", f"paper: {cls.paper or '-'}", f"family: {cls.family}"]
    if doc:
        lines += ["", *[d.rstrip() for d in doc.splitlines()]]
    lines += ["", "options (set with --set rule.NAME=VALUE, or --set " + cls.name + ":rule.NAME=VALUE in compare):"]
    lines += ["  " + line for line in option_lines(cls)]
    rec = getattr(cls, "recommended", None) or {}
    lines += ["", "recommended settings (used unless you set them):"]
    lines += ["  " + x for x in _flat(rec)] if rec else ["  none: the global defaults"]
    lines += ["", "models: " + ", ".join(f"{m} {'yes' if ok else 'no'}" for m, (ok, _) in support(cls).items())]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- models
MODELS = ("MLP", "CNN (LeNet-5)", "residual + BatchNorm")


def _residual(torch: Any, nn: Any) -> Any:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(4)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
            self.bn2 = nn.BatchNorm2d(4)

        def forward(self, x):
            return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))

    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), Block(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 10))


def _model(kind: str, cls: type) -> Any:
    import torch
    from torch import nn

    from ..models import build_model

    if kind == "MLP":
        model_opts = dict((getattr(cls, "recommended", None) or {}).get("model") or {})
        spec = model_opts.pop("spec", "mlp:784-32-10")
        return build_model(spec, input_shape=(1, 28, 28), num_classes=10, **model_opts)
    if kind == "CNN (LeNet-5)":
        return build_model("lenet", input_shape=(1, 28, 28), num_classes=10)
    return _residual(torch, nn)


def support(cls_or_name: Any) -> dict[str, tuple[bool, str]]:
    """``{model kind: (trains, reason)}``: prepare, build the optimizer, one step on 4 examples
    (or the rule's recommended batch size, if smaller)."""
    import torch

    from ..core.losses import get_loss
    from ..core.rule import call_prepare
    from ..errors import ConfigError

    cls = rule_class(cls_or_name) if isinstance(cls_or_name, str) else cls_or_name
    out: dict[str, tuple[bool, str]] = {}
    batch = min(4, int((getattr(cls, "recommended", None) or {}).get("batch_size", 4)))
    for kind in MODELS:
        torch.manual_seed(0)
        x = torch.rand(batch, 1, 28, 28)
        y = torch.arange(batch) % 10
        try:
            rule = cls()
            model = call_prepare(rule, _model(kind, cls), x[:2] if batch >= 2 else x)
            opt = rule.build_optimizer(model, {"name": "sgd", "lr": 0.01})
            loss = get_loss((getattr(cls, "recommended", None) or {}).get("loss", "cross_entropy"))
            result = rule.train_step(model, x, y, loss)
            opt.step()
            rule.after_step(model)
            ok = bool(torch.isfinite(result.loss).all())
            out[kind] = (ok, "" if ok else "non-finite loss")
        except (ConfigError, UserError, NotImplementedError, RuntimeError, ValueError, TypeError) as exc:
            out[kind] = (False, " ".join(str(exc).split())[:200])
    return out


def support_markdown() -> str:
    """The README's rule × model table (regenerate with ``python -m bioplausible.engine.rule_info``)."""
    from ..rules.registry import RULES, list_rules

    head = "| rule | " + " | ".join(MODELS) + " |"
    lines = [head, "|" + "---|" * (len(MODELS) + 1)]
    for name in list_rules():
        sup = support(RULES.get(name))
        lines.append(f"| `{name}` | " + " | ".join("yes" if sup[m][0] else "no" for m in MODELS) + " |")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(support_markdown())
