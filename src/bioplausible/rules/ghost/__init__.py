"""Ghost units (Mesnard et al. 2019): rules ``ghost-ma``, ``ghost-ma-prime``, ``ghost-mb``."""

from __future__ import annotations

from .models import GhostMA, GhostMAPrime, GhostMB

__all__ = ["GhostMA", "GhostMAPrime", "GhostMB"]
