"""Portal forms of the dataset pages: they turn form fields into the services' arguments (every rule
on a dataset is the services' to check).

The schema editor has two forms posting to the one service `dataset_schema_set`: `SchemaForm`, one
row of fields per column, and `SchemaTextForm`, the whole document as YAML or JSON. Neither checks a
schema rule (bounds below each other, categories distinct, the privacy unit's column declared...):
they only read what was typed (a number, a list, a document) and build the schema's dict; the
service's `SchemaRejected` comes back onto the field its `path` names (`add_schema_error`)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import yaml
from django import forms

from clearinghouse.dp.schema import COLUMN_TYPES, NUMERIC_TYPES


class AgreementAcceptForm(forms.Form):
    version = forms.IntegerField(min_value=1, max_value=2**31 - 1)


MAX_NAMES_TEXT = 64 * 501  # the names of a schema's at most 500 columns, comma-separated
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def _number(text: str) -> int | float:
    """A number as typed: an int when written as one (integer columns keep exact values)."""
    text = text.strip().replace("_", "")
    if not _NUMBER.match(text):
        raise forms.ValidationError("Enter a number (e.g. 0, 120 or 2.5).", code="invalid")
    return int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)


def _categories(text: str) -> list[str]:
    """One per line, or separated by commas on a single line."""
    parts = text.splitlines() if "\n" in text.strip() else text.split(",")
    return [part.strip() for part in parts if part.strip()]


def _categories_text(values: list[Any] | None) -> str:
    return "\n".join(str(value) for value in values or [])


@dataclass
class ColumnFields:
    """One column's row of the form, for the template."""

    index: int
    name: str
    type: forms.BoundField
    nullable: forms.BoundField
    lower: forms.BoundField
    upper: forms.BoundField
    categories: forms.BoundField
    max_length: forms.BoundField
    errors: list[str]


class SchemaForm(forms.Form):
    """The columns of the dataset's current schema (a proposal or a confirmed one) with their public
    facts, and the privacy unit. Column names are read-only: they are the file's; the fields are
    named by the schema's paths (`columns[0].lower`), so the service's error lands on its field."""

    def __init__(self, data: Any = None, *, schema: dict[str, Any]):
        self.names = [str(column.get("name", "")) for column in schema.get("columns", [])]
        unit = schema.get("privacy_unit") or {"kind": "row"}
        initial: dict[str, Any] = {
            "column_names": ",".join(self.names),
            "privacy_unit.kind": unit.get("kind", "row"),
            "privacy_unit.column": unit.get("column") or "",
            "privacy_unit.max_rows_per_person": unit.get("max_rows_per_person"),
        }
        for index, column in enumerate(schema.get("columns", [])):
            path = f"columns[{index}]"
            initial[f"{path}.type"] = column.get("type")
            initial[f"{path}.nullable"] = bool(column.get("nullable"))
            initial[f"{path}.lower"] = "" if column.get("lower") is None else str(column["lower"])
            initial[f"{path}.upper"] = "" if column.get("upper") is None else str(column["upper"])
            initial[f"{path}.categories"] = _categories_text(column.get("categories"))
            initial[f"{path}.max_length"] = column.get("max_length")
        super().__init__(data, initial=initial)
        self._add_fields()

    def _add_fields(self) -> None:
        # The columns the page showed: a later upload may have replaced the proposal meanwhile.
        self.fields["column_names"] = forms.CharField(
            required=False, widget=forms.HiddenInput, max_length=MAX_NAMES_TEXT
        )
        self.column_errors: dict[int, list[str]] = {index: [] for index in range(len(self.names))}
        for index, name in enumerate(self.names):
            path = f"columns[{index}]"
            self.fields[f"{path}.type"] = forms.ChoiceField(
                label=f"Type of {name}",
                choices=[(kind, kind) for kind in COLUMN_TYPES],
                widget=forms.Select(attrs={"style": "min-width:8.5rem"}),
            )
            self.fields[f"{path}.nullable"] = forms.BooleanField(label=f"{name} may be empty", required=False)
            for bound in ("lower", "upper"):
                self.fields[f"{path}.{bound}"] = forms.CharField(
                    label=f"{bound.title()} bound of {name}", required=False, max_length=64
                )
            self.fields[f"{path}.categories"] = forms.CharField(
                label=f"Categories of {name}",
                required=False,
                max_length=1_000_000,
                widget=forms.Textarea(attrs={"rows": 3}),
            )
            self.fields[f"{path}.max_length"] = forms.IntegerField(
                label=f"Maximum length of {name}", required=False
            )
        self.fields["privacy_unit.kind"] = forms.ChoiceField(
            label="Privacy unit",
            choices=[
                ("row", "each row is a different person"),
                ("identifier", "rows sharing an identifier column are one person"),
            ],
        )
        self.fields["privacy_unit.column"] = forms.ChoiceField(
            label="Identifier column",
            required=False,
            choices=[("", "—"), *((name, name) for name in self.names)],
        )
        self.fields["privacy_unit.max_rows_per_person"] = forms.IntegerField(
            label="At most rows per person", required=False
        )
        for name, field in self.fields.items():
            if name.startswith("columns["):  # in a table cell without a visible label of its own
                field.widget.attrs["aria-label"] = field.label

    def clean_column_names(self) -> str:
        shown = self.cleaned_data.get("column_names") or ""
        if shown and shown != ",".join(self.names):
            raise forms.ValidationError(
                "The schema changed since this page was opened (a newer upload proposed another one): "
                "review the columns below and confirm again.",
                code="stale",
            )
        return shown

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        for index in range(len(self.names)):
            for bound in ("lower", "upper"):
                key = f"columns[{index}].{bound}"
                text = cleaned.get(key)
                if text and cleaned.get(f"columns[{index}].type") in NUMERIC_TYPES:
                    try:
                        cleaned[key] = _number(text)
                    except forms.ValidationError as exc:
                        self.add_error(key, exc)
        return cleaned

    def columns(self) -> list[ColumnFields]:
        rows = []
        for index, name in enumerate(self.names):
            path = f"columns[{index}]"
            rows.append(
                ColumnFields(
                    index=index,
                    name=name,
                    type=self[f"{path}.type"],
                    nullable=self[f"{path}.nullable"],
                    lower=self[f"{path}.lower"],
                    upper=self[f"{path}.upper"],
                    categories=self[f"{path}.categories"],
                    max_length=self[f"{path}.max_length"],
                    errors=self.column_errors[index],
                )
            )
        return rows

    def unit(self) -> dict[str, forms.BoundField]:
        return {key: self[f"privacy_unit.{key}"] for key in ("kind", "column", "max_rows_per_person")}

    def schema(self) -> dict[str, Any]:
        """The schema document the form says (after `is_valid()`): each column's facts as its type
        takes them (bounds for numbers, categories for categorical, a maximum length for text);
        whether they are right is the service's to say."""
        data = self.cleaned_data
        columns = []
        for index, name in enumerate(self.names):
            path = f"columns[{index}]"
            kind = data[f"{path}.type"]
            column: dict[str, Any] = {"name": name, "type": kind, "nullable": data[f"{path}.nullable"]}
            if kind in NUMERIC_TYPES:
                for bound in ("lower", "upper"):
                    if data.get(f"{path}.{bound}") not in (None, ""):
                        column[bound] = data[f"{path}.{bound}"]
            elif kind == "categorical":
                values = _categories(data.get(f"{path}.categories") or "")
                if values:
                    column["categories"] = values
            elif kind == "text" and data.get(f"{path}.max_length") is not None:
                column["max_length"] = data[f"{path}.max_length"]
            columns.append(column)
        unit: dict[str, Any] = {"kind": data["privacy_unit.kind"]}
        if unit["kind"] == "identifier":
            unit["column"] = data.get("privacy_unit.column") or None
            unit["max_rows_per_person"] = data.get("privacy_unit.max_rows_per_person")
        return {"columns": columns, "privacy_unit": unit}

    def add_schema_error(self, path: str, problem: str) -> None:
        """Puts the service's error where its path points: a field (`columns[1].upper`), else the
        column's row (`columns[1]`: e.g. bounds missing), else the form as a whole."""
        if path in self.fields:
            self.add_error(path, problem)
            return
        if path == "privacy_unit":
            self.add_error("privacy_unit.kind", problem)
            return
        match = re.match(r"^columns\[(\d+)\]", path)
        if match and int(match.group(1)) in self.column_errors:
            self.column_errors[int(match.group(1))].append(problem)
            self.add_error(None, f"{self.names[int(match.group(1))]}: {problem}")
            return
        self.add_error(None, f"{path}: {problem}" if path else problem)


class SchemaTextForm(forms.Form):
    """The advanced view: the whole schema as YAML or JSON. A document that does not parse is
    answered with the line and column where the parser stopped."""

    schema = forms.CharField(
        label="Schema (YAML or JSON)",
        max_length=2_000_000,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 18, "spellcheck": "false", "style": "max-width:100%"}),
    )

    def clean_schema(self) -> Any:
        text = self.cleaned_data["schema"]
        json_error: json.JSONDecodeError | None = None
        if text.lstrip().startswith(("{", "[")):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:  # YAML's flow style may still read it
                json_error = exc
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            if json_error is not None:
                raise forms.ValidationError(
                    f"Not valid JSON: {json_error.msg} at line {json_error.lineno}, "
                    f"column {json_error.colno}.",
                    code="parse_error",
                ) from None
            mark = getattr(exc, "problem_mark", None)
            problem = getattr(exc, "problem", None) or "cannot be read"
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise forms.ValidationError(f"Not valid YAML: {problem}{where}.", code="parse_error") from None
        if document is None:
            raise forms.ValidationError("The document is empty.", code="parse_error")
        return document
