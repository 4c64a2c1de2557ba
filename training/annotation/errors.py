"""The annotation core's one error type, with a stable code the API turns into a 4xx."""

from __future__ import annotations

__all__ = ["AnnotationError"]


class AnnotationError(ValueError):
    """Bad input to the annotation core; ``code`` is stable (e.g. ``"target_precision_out_of_range"``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
