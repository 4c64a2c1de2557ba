"""Validation of human-entered names: what a person sees must be what is stored."""

from __future__ import annotations

import re
import unicodedata

from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import validate_email

from .errors import ValidationFailed

# Bidirectional overrides/isolates and zero-width characters make one name look like another.
_INVISIBLE = {"\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad"}
_BIDI = (
    {chr(c) for c in range(0x202A, 0x202F)}
    | {chr(c) for c in range(0x2066, 0x206A)}
    | {"\u200e", "\u200f", "\u061c"}
)
SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,48}[a-z0-9])?$")


def clean_name(value: object, *, field: str, max_length: int, min_length: int = 1) -> str:
    """NFC-normalises, trims and checks a display name; refuses control, invisible and bidi characters."""
    if not isinstance(value, str):
        raise ValidationFailed(
            f"{field} must be text.", code="invalid_name", fields={field: ["Must be text."]}
        )
    text = unicodedata.normalize("NFC", value).strip()
    if len(text) < min_length:
        raise ValidationFailed(
            f"{field} must not be empty.", code="invalid_name", fields={field: ["Required."]}
        )
    if len(text) > max_length:
        message = f"At most {max_length} characters."
        raise ValidationFailed(f"{field}: {message}", code="invalid_name", fields={field: [message]})
    for char in text:
        if (
            char in _INVISIBLE
            or char in _BIDI
            or unicodedata.category(char) in {"Cc", "Cf", "Cs", "Co", "Cn"}
        ):
            message = f"Contains a control or invisible character (U+{ord(char):04X})."
            raise ValidationFailed(f"{field}: {message}", code="invalid_name", fields={field: [message]})
    return text


def clean_slug(value: object, *, field: str = "slug") -> str:
    if not isinstance(value, str) or not SLUG_RE.match(value):
        message = "Use 1-50 lower-case ASCII letters, digits and inner hyphens."
        raise ValidationFailed(f"{field}: {message}", code="invalid_slug", fields={field: [message]})
    return value


def clean_email(value: object, *, field: str = "email") -> str:
    candidate = value.strip() if isinstance(value, str) else ""
    try:
        if not candidate or len(candidate) > 254:
            raise DjangoValidationError("invalid")
        validate_email(candidate)
    except DjangoValidationError:
        raise ValidationFailed(
            f"{field}: enter a valid email address.",
            code="invalid_email",
            fields={field: ["Enter a valid email address."]},
        ) from None
    return candidate
