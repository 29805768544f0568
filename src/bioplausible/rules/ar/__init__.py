"""Activation relaxation (Millidge et al. 2020): rule ``ar``, its graph tracer and diagnostics."""

from . import ar  # noqa: F401  (registers the rule)
