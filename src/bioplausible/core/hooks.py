"""What a rule family adds besides its rules: command-line subcommands and plots of a run.

A family registers these from its own folder when it is imported; the command line lists them
after :func:`bioplausible._registry.discover_families` and never names a family itself::

    from bioplausible.core.hooks import Command, Plot, register_command, register_plot

    register_plot(Plot("ghost-diagnostics", "plot a ghost-unit run's Figs 3-5 diagnostics",
                       plot_ghost_diagnostics))          # bioplausible ghost-diagnostics RUN_DIR
    register_command(Command("relax-diagnostic", "activation relaxation: ...",
                             add_arguments, run))        # any arguments of its own
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._registry import Registry


@dataclass(frozen=True)
class Command:
    """A subcommand: ``add_arguments(parser)`` declares its flags, ``run(args)`` returns the exit status."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


@dataclass(frozen=True)
class Plot:
    """A figure drawn from a finished run directory: ``render(run_dir, out)`` writes it and returns
    what to print (its path or a line about it). On the command line: ``bioplausible NAME RUN_DIR
    [--out FILE]``."""

    name: str
    help: str
    render: Callable[[str | Path, str | Path | None], Any]
    run_dir_help: str = "a run directory"
    out_help: str = "output file (default: inside RUN_DIR)"


COMMANDS: Registry[Command] = Registry("command", discover=True)
PLOTS: Registry[Plot] = Registry("plot", discover=True)


def register_command(command: Command) -> Command:
    return COMMANDS.add(command.name, command)


def register_plot(plot: Plot) -> Plot:
    return PLOTS.add(plot.name, plot)


__all__ = ["COMMANDS", "PLOTS", "Command", "Plot", "register_command", "register_plot"]
