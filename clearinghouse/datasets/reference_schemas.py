"""Declared schemas of the public reference datasets in ../shared/datasets (used by the demo, the
benchmarks and the tests). Bounds are the public ones the OpenDP/SmartNoise projects use for PUMS,
and the documented ranges of the UCI Adult extract — never read from the data."""

PUMS = {
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

ADULT = {
    "columns": [
        {"name": "sex", "type": "categorical", "categories": ["Male", "Female"]},
        {"name": "age", "type": "integer", "lower": 17, "upper": 90},
        {"name": "race", "type": "categorical"},
        {"name": "marital-status", "type": "categorical"},
        {"name": "education", "type": "categorical"},
        {"name": "native-country", "type": "categorical"},
        {"name": "workclass", "type": "categorical"},
        {"name": "occupation", "type": "categorical"},
        {"name": "salary-class", "type": "categorical", "categories": ["<=50K", ">50K"]},
    ],
    "privacy_unit": {"kind": "row"},
}

SMS_SPAM = {
    "columns": [
        {"name": "Label", "type": "categorical", "categories": ["ham", "spam"]},
        {"name": "SMS", "type": "text", "max_length": 1000},
    ],
    "privacy_unit": {"kind": "row"},
}
