"""Reading and checking uploads (pure Polars) on the real shared datasets and on broken files."""

import polars as pl
import pytest

from clearinghouse.datasets import reference_schemas
from clearinghouse.datasets.ingest import IngestError, check, infer_schema, read_raw
from clearinghouse.datasets.schema import DatasetSchema
from tests.datasets.test_schema import PUMS_YAML
from tests.shared_data import DATASETS as SHARED

PUMS = DatasetSchema.parse(PUMS_YAML)
ADULT = DatasetSchema.from_dict(reference_schemas.ADULT)
SMS = DatasetSchema.from_dict(reference_schemas.SMS_SPAM)


def test_pums_is_read_checked_and_typed():
    result = check(read_raw((SHARED / "pums_1000.csv").read_bytes(), fmt="csv"), PUMS)
    table = result.table
    assert table.height == 1000 and result.report["rows_stored"] == 1000
    assert table.schema["age"] == pl.Int64 and table.schema["income"] == pl.Float64
    assert table.schema["married"] == pl.Boolean
    assert result.report["violations"] == 0
    assert result.report["duplicate_rows"] == 3
    assert table["income"].max() <= 500000


def test_adult_semicolons_are_sniffed():
    result = check(read_raw((SHARED / "adult.csv").read_bytes(), fmt="csv"), ADULT)
    assert result.table.height == 30162
    assert set(result.table["salary-class"].unique()) == {"<=50K", ">50K"}


def test_sms_tsv_with_stray_quotes_and_text_lengths():
    data = (SHARED / "sms_spam.tsv").read_bytes()
    with pytest.raises(IngestError):  # its messages hold unbalanced double quotes
        read_raw(data, fmt="csv", delimiter="\t")
    result = check(read_raw(data, fmt="csv", delimiter="\t", quote_char=None), SMS)
    assert result.table.height == 5574
    assert result.table["Label"].value_counts().sort("Label")["count"].to_list() == [4827, 747]
    lengths = result.report["columns"]["SMS"]["text_length"]
    assert 0 < lengths["min"] <= lengths["median"] <= lengths["p90"] <= lengths["max"] <= 1000


def test_headerless_file_takes_the_declared_names():
    raw = read_raw(b"ham\thello\nspam\tWIN NOW\n", fmt="csv", delimiter="\t", column_names=["Label", "SMS"])
    assert check(raw, SMS).table["SMS"].to_list() == ["hello", "WIN NOW"]


def test_parquet_upload_is_read():
    table = pl.read_csv(SHARED / "pums_1000.csv", infer_schema=False)
    import io

    buffer = io.BytesIO()
    table.write_parquet(buffer)
    assert check(read_raw(buffer.getvalue(), fmt="parquet"), PUMS).table.height == 1000


BAD_CSV = (
    b"age,sex,educ,race,income,married\n30,1,9,1,1000,1\nforty,1,9,1,1000,1\n30,1,99,1,1000,1\n"
    b"130,1,9,1,1000,1\n30,,9,1,-5,1\n"
)


def test_violations_are_refused_with_line_numbers():
    with pytest.raises(IngestError) as info:
        check(read_raw(BAD_CSV, fmt="csv"), PUMS)
    assert info.value.code == "schema_violations"
    columns = info.value.report["columns"]
    assert columns["age"]["type_errors"] == {"count": 1, "first_lines": [3]}
    assert columns["educ"]["unknown_categories"] == {"count": 1, "first_lines": [4]}
    assert columns["age"]["out_of_bounds"] == {"count": 1, "first_lines": [5]}
    assert columns["sex"]["nulls_not_allowed"] == {"count": 1, "first_lines": [6]}
    assert columns["income"]["out_of_bounds"] == {"count": 1, "first_lines": [6]}


def test_drop_repair_keeps_only_good_rows_and_says_so():
    result = check(read_raw(BAD_CSV, fmt="csv"), PUMS, repair="drop")
    assert result.table.height == 1
    assert result.report["repaired"]["dropped_rows"] == 4


def test_clamp_repair_clamps_bounds_and_drops_the_unrepairable():
    result = check(read_raw(BAD_CSV, fmt="csv"), PUMS, repair="clamp")
    # 'forty', unknown educ and the null sex cannot be repaired; 130 is clamped to 100.
    assert result.table["age"].to_list() == [30, 100]
    assert result.report["repaired"] == {"dropped_rows": 3, "clamped_values": 2, "truncated_values": 0}


@pytest.mark.parametrize(
    "data,kwargs,code",
    [
        (b"", {}, "empty_file"),
        (b"age,sex\n", {}, "empty_file"),
        (b"age,sex\n1,2\n3,4,5,6\n", {}, "ragged_rows"),
        (b"age,sex\n\xff\xfe,1\n", {}, "invalid_utf8"),
        (b"not parquet", {"fmt": "parquet"}, "unreadable_parquet"),
    ],
)
def test_unreadable_files(data, kwargs, code):
    with pytest.raises(IngestError) as info:
        read_raw(data, **{"fmt": "csv", **kwargs})
    assert info.value.code == code


def test_wrong_delimiter_reports_the_missing_columns():
    raw = read_raw((SHARED / "adult.csv").read_bytes(), fmt="csv", delimiter=",")
    with pytest.raises(IngestError) as info:
        check(raw, ADULT)
    assert info.value.code == "missing_columns" and "sex" in info.value.message


def test_identifier_privacy_unit_bounds_contributions():
    schema = DatasetSchema.from_dict(
        {
            "columns": [
                {"name": "pid", "type": "text"},
                {"name": "x", "type": "integer", "lower": 0, "upper": 9},
            ],
            "privacy_unit": {"kind": "identifier", "column": "pid", "max_rows_per_person": 2},
        }
    )
    raw = read_raw(b"pid,x\na,1\na,2\na,3\nb,4\n", fmt="csv")
    result = check(raw, schema)
    assert sorted(result.table["x"].to_list()) == [1, 2, 4]
    assert result.report["contribution_limit"]["dropped_rows"] == 1


def test_inferred_bounds_are_marked_as_proposals():
    proposal = infer_schema(read_raw((SHARED / "pums_1000.csv").read_bytes(), fmt="csv"))
    assert "proposals only" in proposal["warning"]
    columns = {c["name"]: c for c in proposal["schema"]["columns"]}
    assert columns["age"]["type"] == "integer" and columns["income"]["type"] == "float"
    DatasetSchema.from_dict(proposal["schema"])  # a valid schema, ready for the steward to edit


@pytest.mark.parametrize(
    "data",
    [
        BAD_CSV,
        (SHARED / "pums_1000.csv").read_bytes(),
        b"age,sex,educ,race,income,married\n 31 ,1,9,1, 1e3 ,True\n",
    ],
)
def test_typed_fast_path_reports_exactly_like_the_text_path(data):
    def outcome(raw):
        try:
            result = check(raw, PUMS, repair="drop")
        except IngestError as exc:
            return exc.code, exc.report, None
        return None, result.report, result.table

    fast, slow = outcome(read_raw(data, fmt="csv", schema=PUMS)), outcome(read_raw(data, fmt="csv"))
    assert fast[:2] == slow[:2]
    assert (fast[2] is None and slow[2] is None) or fast[2].equals(slow[2])


@pytest.mark.parametrize(
    "data,code,where",
    [
        # The sniffer gives up on these (a short row): the header's semicolons still decide, so the
        # report locates the row instead of claiming the declared columns are missing.
        (b"age;sex\n30;1\n31;2\n32\n", "schema_violations", ("sex", "nulls_not_allowed", [4])),
        (b"age;sex\n30;1\n31;2\n32;1;7\n", "ragged_rows", None),
    ],
)
def test_a_delimiter_the_sniffer_gives_up_on_comes_from_the_header(data, code, where):
    schema = DatasetSchema.from_dict(
        {"columns": [{"name": n, "type": "integer", "lower": 0, "upper": 100} for n in ("age", "sex")]}
    )
    with pytest.raises(IngestError) as info:
        check(read_raw(data, fmt="csv"), schema)
    assert info.value.code == code
    if where is not None:
        column, finding, lines = where
        assert info.value.report["columns"][column][finding]["first_lines"] == lines
