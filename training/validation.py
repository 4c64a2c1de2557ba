"""Validation rules as pydantic field constraints, and the readable messages made from them.

A configuration declares each rule once, as a constrained field whose ``description`` is the rule
in words (``"must be a positive integer"``); ``Rules.problems`` checks a whole configuration and
answers one sentence per broken rule (``"batch_size must be a positive integer, got 0"``), named
by the key the user wrote (a field's alias where it has one). A rule that spans fields, or needs a
sentence of its own, raises ``problem(...)`` from a validator; its message is kept as written.

Light on purpose (pydantic only): the web service validates configurations with it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

__all__ = ["Rules", "positive_int", "problem", "real", "rule"]

_PROBLEM = "configuration_problem"


def rule(description: str, **constraints: Any) -> Any:
    """A strictly typed field (no ``"3"`` for 3, no ``true`` for 1) under ``constraints``, whose
    ``description`` is the rule as the messages say it."""
    return Field(description=description, strict=True, **constraints)


def positive_int(**constraints: Any) -> Any:
    return rule("must be a positive integer", gt=0, **constraints)


def real(
    low: float, *, high: float = math.inf, low_open: bool = False, high_open: bool = False, **constraints: Any
) -> Any:
    """A finite number (an integer will do) above ``low`` (``low_open``: strictly) and at most
    ``high`` (``high_open``: below it)."""
    words = f"must be a finite number {'>' if low_open else '>='} {low}"
    if high != math.inf:
        words += f" and {'<' if high_open else '<='} {high}"
    bounds: dict[str, float] = {"gt" if low_open else "ge": low}
    if high != math.inf:
        bounds["lt" if high_open else "le"] = high
    return rule(words, allow_inf_nan=False, **bounds, **constraints)


def problem(message: str) -> PydanticCustomError:
    """A broken rule whose message is ``message`` as written (raise it from a validator)."""
    return PydanticCustomError(_PROBLEM, "{message}", {"message": message})


class Rules(BaseModel):
    """Base of a configuration's rules: strict, frozen, unknown keys ignored (each caller decides
    what an unknown key means)."""

    model_config = ConfigDict(strict=True, frozen=True, arbitrary_types_allowed=True, populate_by_name=True)

    @classmethod
    def problems(cls, data: Mapping[str, Any]) -> list[str]:
        """Every broken rule of ``data``, one sentence each (``[]`` when it is valid)."""
        try:
            cls.model_validate(data)
        except ValidationError as exc:
            return cls._messages(exc, data)
        return []

    @classmethod
    def _messages(cls, exc: ValidationError, data: Mapping[str, Any]) -> list[str]:
        messages: list[str] = []
        fields_seen: set[str] = set()
        # Errors name a field by its alias where it has one.
        fields = {**cls.model_fields, **{f.alias: f for f in cls.model_fields.values() if f.alias}}
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else ""
            field = fields.get(name)
            if error["type"] == _PROBLEM or field is None:
                message = str(error["msg"])
            elif name in fields_seen:
                continue  # one sentence per field (a list's items each fail on their own)
            else:
                key = field.alias or name
                value = data.get(key, data.get(name))
                message = f"{key} {field.description or 'is invalid'}, got {value!r}"
            fields_seen.add(name)
            if message not in messages:
                messages.append(message)
        return messages
