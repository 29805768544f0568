"""Errors a user can cause. The CLI prints their message on one line and exits with status 2."""

from __future__ import annotations


class UserError(ValueError):
    """Base class: something the user asked for is wrong; the message says what to do."""


class ConfigError(UserError):
    """A malformed or inconsistent configuration value (unknown key, bad type, bad range)."""


class UnknownNameError(UserError):
    """An unknown rule, dataset, model, loss, optimizer or preset name."""


class DataError(UserError):
    """A dataset problem: missing, truncated or corrupt files, or a failed download."""


class MissingDataError(DataError):
    """Dataset files are absent and could not be downloaded."""


class CorruptDataError(DataError):
    """A dataset file exists but is truncated, corrupt or fails its checksum."""


class StorageError(UserError):
    """Writing a run's files failed (disk full, quota, read-only): what was written before is kept."""


class IncompatibleModelError(UserError):
    """A rule cannot be applied to the given model architecture."""


class DivergenceError(RuntimeError):
    """Training produced a non-finite or exploding loss; the run stops and keeps its metrics."""
