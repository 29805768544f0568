"""Backpropagation: the reference every other rule is compared with.

δ_l = (W_lᵀ δ_{l+1}) ⊙ f′(a_l),  ΔW_l = −η δ_{l+1} h_lᵀ  (Rumelhart et al. 1986).
"""

from __future__ import annotations

from typing import ClassVar

from ..core.rule import Rule
from .registry import register


@register("bp")
class BP(Rule):
    """Backpropagation: the exact gradient, the reference every other rule is compared with.

    ``δ_l = (W_lᵀ δ_{l+1}) ⊙ f′(a_l)``, ``∂loss/∂W_l = δ_{l+1} h_lᵀ`` (Rumelhart, Hinton &
    Williams 1986); ``train_step`` is ``loss.backward()`` on the model as it is.

    Options: none.

    Models: any ``nn.Module`` autograd can differentiate.
    """

    family = "exact"
    paper = "Rumelhart, Hinton & Williams 1986"
    summary = "exact gradient: δ_l = (W_lᵀ δ_{l+1}) ⊙ f′(a_l)"
    defaults: ClassVar[dict] = {}
