from __future__ import annotations

PUMS_SCHEMA = {
    "columns": [
        {"name": "age", "type": "integer", "lower": 0, "upper": 100},
        {"name": "sex", "type": "categorical", "categories": ["0", "1"]},
        {"name": "educ", "type": "categorical", "categories": [str(i) for i in range(1, 17)]},
        {"name": "race", "type": "categorical"},
        {"name": "income", "type": "float", "lower": 0, "upper": 500000},
        {"name": "married", "type": "boolean"},
    ],
    "privacy_unit": {"kind": "row"},
}
