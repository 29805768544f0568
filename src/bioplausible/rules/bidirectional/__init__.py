"""Bidirectional FA and DFA (Luo, Fu & Glass 2017): rules ``bfa`` and ``bdfa``.

Registers the rules, the loss ``bce_sum`` (:mod:`.losses`) and the ``generate`` plot
(:mod:`.generate`).
"""

from . import generate, losses  # noqa: F401  (registers the loss and the plot)
from .bdfa import BidirectionalDFA
from .bfa import BidirectionalFA

__all__ = ["BidirectionalDFA", "BidirectionalFA"]
