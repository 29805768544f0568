"""Bidirectional FA and DFA (Luo, Fu & Glass 2017): rules ``bfa`` and ``bdfa``."""

from .bdfa import BidirectionalDFA
from .bfa import BidirectionalFA

__all__ = ["BidirectionalDFA", "BidirectionalFA"]
