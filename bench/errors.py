"""Errors a cgbench user can cause (bad options, missing runs, foreign result files).

`BenchError` is an `EngineError`, so the CLI boundary (`engine.cli_common.user_errors`)
turns both into one line on stderr and exit code 1.
"""
from __future__ import annotations

from engine.errors import EngineError


class BenchError(EngineError):
    """A problem with cgbench input: options, run directories, result files."""


class SchemaError(BenchError):
    """A results file written by another schema version (or not by cgbench at all)."""
