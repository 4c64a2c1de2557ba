"""The pure core of model-assisted annotation (issue 14): embeddings, a label proposer, active
learning order, automatic labelling at a target precision, label-error detection and duplicates.

Django-free (import-linter checks it): the annotation app calls these functions in its workers.
Items are identified by their position in the arrays the caller passes; no text is logged.
"""

from __future__ import annotations

from training.annotation.errors import AnnotationError

__all__ = ["AnnotationError"]
