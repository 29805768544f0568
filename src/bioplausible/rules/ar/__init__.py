"""Activation relaxation (Millidge et al. 2020): rule ``ar``, its graph tracer and diagnostics.

Registers the rule and the ``relax-diagnostic`` subcommand (:mod:`.commands`).
"""

from . import ar, commands  # noqa: F401  (registers the rule and the subcommand)
