"""Built-in learning rules; importing this package registers them.

Each module holds one algorithm with its paper reference and equations.
"""

from __future__ import annotations

import importlib

from .base import FeedbackPair, Rule, StepResult
from .bp import BP

# Optional rule modules, imported if present (each registers itself).
for _mod in ("feedback", "dfa", "ar", "ghost"):
    try:
        importlib.import_module(f"{__name__}.{_mod}")
    except ModuleNotFoundError as _exc:  # pragma: no cover - only while a module is absent
        if _exc.name != f"{__name__}.{_mod}":
            raise

__all__ = ["BP", "FeedbackPair", "Rule", "StepResult"]
