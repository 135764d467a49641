"""Errors a user can cause, raised by the engine.

Every message is one line that names the file, field or value at fault and
says how to fix it.  The CLIs turn :class:`EngineError` into an exit code and
the server into a 4xx response; nothing else should be caught as "user error".
"""
from __future__ import annotations


class EngineError(Exception):
    """Base class: a problem with the user's input (files, names, options)."""

    exit_code = 1


class UnknownVariantError(EngineError):
    """A variant name that is not in the table."""


class ModelFilesError(EngineError):
    """A model directory or one of its files is missing, truncated or inconsistent."""


class WeightFileError(ModelFilesError):
    """A weight file cannot be read safely (corrupt, truncated or carrying code)."""


class ConfigError(ModelFilesError):
    """A config file is unreadable or disagrees with the weights."""


class OptionError(EngineError):
    """A bad option value (dtype, device, sampling parameter, prompt length)."""
