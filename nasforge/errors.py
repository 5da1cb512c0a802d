"""Exceptions that carry a message meant for the user.

The CLI turns any :class:`NasforgeError` into one line on stderr and exit code 2 (``--debug`` shows the
traceback). Library code raises the most specific subclass and says in the message what to do about it.
"""

from __future__ import annotations

__all__ = [
    "NasforgeError",
    "ConfigError",
    "ArchitectureError",
    "DataError",
    "CheckpointError",
    "ExportError",
    "MissingDependencyError",
]


class NasforgeError(Exception):
    """Base class of all errors caused by the user's input or environment (not by a bug)."""


class ConfigError(NasforgeError, ValueError):
    """A configuration file or option is malformed, has an unknown key or a bad value."""


class ArchitectureError(NasforgeError, ValueError):
    """An architecture does not belong to its search space."""


class DataError(NasforgeError, ValueError):
    """A dataset spec, path or file is missing or malformed."""


class CheckpointError(NasforgeError, ValueError):
    """A checkpoint is missing, corrupt, or belongs to another model."""


class ExportError(NasforgeError, RuntimeError):
    """Export failed or the exported model does not match the source model."""


class MissingDependencyError(NasforgeError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""
