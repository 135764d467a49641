"""Errors cgconvert adds to the engine's (all are `EngineError`: one line, exit 1)."""
from __future__ import annotations

from engine.errors import EngineError, ModelFilesError


class OutputError(EngineError):
    """The output directory exists, or cannot be written (disk full, permissions)."""


class SourceError(ModelFilesError):
    """A source checkpoint (Hugging Face or PaddleNLP) is incomplete or inconsistent."""


class FetchError(EngineError):
    """A download failed; what was received is kept as `<file>.part` for resuming."""


class VerifyError(EngineError):
    """The converted model's logits disagree with the source's beyond the threshold."""


class BundleError(EngineError):
    """A bundle cannot be made (no wheel for the target, a bad option) or is not a bundle."""
