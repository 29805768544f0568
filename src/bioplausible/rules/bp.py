"""Backpropagation: the reference every other rule is compared with.

δ_l = (W_lᵀ δ_{l+1}) ⊙ f′(a_l),  ΔW_l = −η δ_{l+1} h_lᵀ  (Rumelhart et al. 1986; spec §0).
"""

from __future__ import annotations

from ..core.rule import Rule
from .registry import register


@register("bp")
class BP(Rule):
    family = "exact"
    paper = "Rumelhart, Hinton & Williams 1986"
    summary = "exact gradient: δ_l = (W_lᵀ δ_{l+1}) ⊙ f′(a_l)"
    defaults: dict = {}
