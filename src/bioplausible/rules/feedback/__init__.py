"""Feedback-pathway rules: FA, sign symmetry, KP, WM (:mod:`.feedback`) and DFA (:mod:`.dfa`)."""

from . import dfa, feedback  # noqa: F401  (registers the rules)
