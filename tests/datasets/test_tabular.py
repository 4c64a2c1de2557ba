"""The one delimiter sniffer (clearinghouse.tabular), shared by ingestion and the training loader."""

import subprocess
import sys

import pytest

from clearinghouse.tabular import COMMON_DELIMITERS, sniff_delimiter

UPLOADS = COMMON_DELIMITERS + ":"


@pytest.mark.parametrize(
    "sample,expected",
    [
        ("age,sex\n30,1\n31,2\n", ","),
        ("age;sex\n30;1\n31;2\n", ";"),
        ("age\tsex\n30\t1\n31\t2\n", "\t"),
        ("text|label\nhi, there|ham\nfree prize|spam\n", "|"),
        ('k;v\n"a;b";1\n"c";2\n', ";"),
        # The sniffer gives up on rows of differing widths: the first line's delimiter is taken.
        ("age;sex\n30;1\n31;2\n32\n", ";"),
        ("id|note\n1|a\n2\n3|b|c\n", "|"),
        # A single column, or nothing at all: a comma.
        ("age\n30\n31\n", ","),
        ("", ","),
    ],
)
def test_sniffed_delimiter(sample, expected):
    assert sniff_delimiter(sample) == expected
    assert sniff_delimiter(sample, candidates=UPLOADS) == expected


def test_candidates_are_the_callers():
    colons = "start:end\n10:12\n11:13\n"
    assert sniff_delimiter(colons, candidates=UPLOADS) == ":"
    assert sniff_delimiter(colons) == ","  # the training loader's set has no colon
    assert sniff_delimiter("a:b\n1:2\n3\n", candidates=UPLOADS) == ":"  # the first-line fallback too
    assert sniff_delimiter("a:b\n1:2\n3\n") == ","


def test_the_module_is_pure():
    """`training` (a pure core) imports it: it must load neither Django nor Polars."""
    code = (
        "import sys, clearinghouse.tabular; "
        "print(sorted(m for m in ('django', 'polars', 'rest_framework', 'celery') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
