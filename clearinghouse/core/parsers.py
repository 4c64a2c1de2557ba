"""JSON request bodies that every view can store: what the database or Python would choke on later
(with a 500) is refused here, at the door, with a 400 `parse_error`.

* nesting deeper than Python's json can follow (it raises RecursionError, not a parse error);
* NUL characters (PostgreSQL text and jsonb cannot hold them) and lone surrogates (not encodable as
  UTF-8), in any string or key;
* numbers out of a float's range (`1e999` parses as infinity; NaN and Infinity are refused by DRF's
  strict parsing already).

`NonFiniteAsNullJSONParser` is for senders that write Python's json (`NaN` for a metric nobody
reported): there such numbers become null instead.
"""

from __future__ import annotations

import codecs
import json
import math
from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError
from rest_framework.settings import api_settings
from rest_framework.utils import json as drf_json


def _bad_text(text: str) -> str | None:
    if "\x00" in text:
        return "NUL characters are not allowed"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "lone surrogate characters are not allowed"
    return None


def clean_json(value: Any, *, non_finite_as_null: bool = False) -> Any:
    """Checks (and for non-finite numbers, when asked, fixes) a parsed JSON value without recursion;
    raises ParseError naming the first problem."""

    def check(item: Any) -> Any:
        if isinstance(item, str):
            problem = _bad_text(item)
            if problem:
                raise ParseError(f"JSON parse error - {problem}.")
        elif isinstance(item, float) and not math.isfinite(item):
            if not non_finite_as_null:
                raise ParseError("JSON parse error - numbers must be finite.")
            return None
        elif isinstance(item, (dict, list)):
            pending.append(item)
        return item

    pending: list[Any] = []
    value = check(value)
    while pending:
        container = pending.pop()
        if isinstance(container, dict):
            for key in list(container):
                check(key)
                container[key] = check(container[key])
        else:
            for index, item in enumerate(container):
                container[index] = check(item)
    return value


class JSONParser(parsers.JSONParser):
    """DRF's strict JSON parser, refusing what could not be stored (see the module)."""

    non_finite_as_null = False

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            decoded = codecs.getreader(parsers.get_encoding(parser_context or {}))(stream)
            # NaN/Infinity: refused when strict (DRF's STRICT_JSON), else parsed as floats for clean_json.
            strict = api_settings.STRICT_JSON and not self.non_finite_as_null
            data = json.load(decoded, parse_constant=drf_json.strict_constant if strict else None)
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply.") from None
        return clean_json(data, non_finite_as_null=self.non_finite_as_null)


class NonFiniteAsNullJSONParser(JSONParser):
    """As JSONParser, but NaN, Infinity and out-of-range numbers become null."""

    non_finite_as_null = True
