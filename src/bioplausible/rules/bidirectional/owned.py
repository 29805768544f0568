"""Rule-owned tensors of BFA/BDFA through the contract's ``Rule.own`` when it exists.

The core contract (docs/contract.md §3) gives every rule ``self.own(name, tensor, group=, layer=)``,
which registers the tensor in ``rule.owned`` (checkpointed, moved by ``rule.to``). Until a base
class provides it, :class:`OwnedMixin` keeps the tensors in a local ``ParameterDict``, hands them
to the optimizer through ``aux_parameters`` and saves them in ``state_dict`` so resume is exact.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class OwnedMixin:
    """``_own`` / ``_owned_tensors`` / ``_end_phase`` on top of whatever the base Rule offers."""

    def _init_owned(self) -> None:
        self._fallback = nn.ParameterDict()
        self._groups: dict[str, list[str]] = {}

    def _own(self, name: str, tensor: torch.Tensor, group: str, layer: int) -> nn.Parameter:
        self._groups.setdefault(group, []).append(name)
        own = getattr(super(), "own", None)
        if own is not None:  # the core contract's registry
            return own(name, tensor, group=group, layer=layer)
        key = name.replace(".", "_")
        self._fallback[key] = nn.Parameter(tensor)
        return self._fallback[key]

    def _end_phase(self, index: int) -> None:
        """Step phase ``index`` now if the contract's phase optimizers exist (BFA's order)."""
        step = getattr(self, "step_phase", None)
        if step is not None:
            step(index)

    # ---- fallback plumbing (superseded by the contract's RuleState) -------------------------
    def _fallback_groups(self) -> dict[str, list[nn.Parameter]]:
        if getattr(super(), "own", None) is not None:
            return {}
        return {g: [self._fallback[n.replace(".", "_")] for n in names] for g, names in self._groups.items()}

    def _fallback_state(self) -> dict[str, Any]:
        return {k: v.detach().clone() for k, v in self._fallback.items()}

    def _load_fallback(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for k, v in state.items():
                if k in self._fallback:
                    self._fallback[k].copy_(v)
