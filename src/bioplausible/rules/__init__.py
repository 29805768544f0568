"""Built-in learning rules; importing this package registers them.

Every module and subpackage in this folder is imported here (no hand-kept list), so a new rule
is one file with an ``@register("name")`` class. Each module holds one algorithm with its paper
reference and equations; helper modules without a rule register nothing.
"""

from __future__ import annotations

import importlib
import pkgutil

from ..core.rule import FeedbackPair, ParamEntry, Rule, RuleState, StepResult
from .bp import BP

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["BP", "FeedbackPair", "ParamEntry", "Rule", "RuleState", "StepResult"]
