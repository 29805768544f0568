"""The ``bioplausible`` command line: argument parsing only (:mod:`.app`, :mod:`.sweep`)."""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """The ``bioplausible`` console script: parse ``argv`` and run the command (exit status)."""
    from .app import main as run

    return run(argv)
