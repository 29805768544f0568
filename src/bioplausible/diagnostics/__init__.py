"""Instruments that show how a learning rule's internal dynamics relate to backprop."""

from .relaxation import (
    plot_relaxation_convergence,
    relaxation_convergence,
    run_relaxation_diagnostic,
)

__all__ = ["plot_relaxation_convergence", "relaxation_convergence", "run_relaxation_diagnostic"]
