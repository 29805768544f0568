"""Layers whose backward pass uses a feedback tensor instead of the weight transpose."""

from .context import exact_backward, exact_backward_enabled

__all__ = ["exact_backward", "exact_backward_enabled"]
