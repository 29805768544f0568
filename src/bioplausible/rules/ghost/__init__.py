"""Ghost units (Mesnard et al. 2019): rules ``ghost-ma``, ``ghost-ma-prime``, ``ghost-mb``.

Registers the rules, the losses ``nudged_sum:β`` / ``nudged_batchmean:β`` (:mod:`.losses`) and
the ``ghost-diagnostics`` plot (:mod:`.diagnostics`).
"""

from __future__ import annotations

from . import diagnostics, losses  # noqa: F401  (registers the losses and the plot)
from .models import GhostMA, GhostMAPrime, GhostMB

__all__ = ["GhostMA", "GhostMAPrime", "GhostMB"]
