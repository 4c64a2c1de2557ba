"""Delimited text: the one delimiter sniffer, for dataset ingestion and the training data loader.

Pure standard library (no Django, no Polars): `training`, a pure core, imports it too. Each caller
names its own candidates: an upload may be any tabular export, colon-separated ones included, while
a training table holds free text, where colons are common ("Subject: ...", "10:30", URLs) and would
be taken for the delimiter of a text-and-label file.
"""

from __future__ import annotations

import csv

COMMON_DELIMITERS = ",;\t|"
SAMPLE_SIZE = 64 * 1024  # how much of a file (characters, or bytes) the sniffer is given


def sniff_delimiter(sample: str, *, candidates: str = COMMON_DELIMITERS) -> str:
    """The delimiter of the delimited text starting with `sample`, one of `candidates`.

    `csv.Sniffer` decides; when it gives up (a single column, or rows of differing widths), the
    candidate most frequent on the first line, and a comma when the first line holds none."""
    try:
        return csv.Sniffer().sniff(sample, delimiters=candidates).delimiter
    except csv.Error:
        lines = sample.splitlines()
        first = lines[0] if lines else ""
        best = max(candidates, key=first.count)
        return best if first.count(best) else ","
