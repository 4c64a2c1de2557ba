from clearinghouse.datasets.reference_schemas import PUMS as PUMS_SCHEMA  # noqa: F401 (re-exported)
