"""Loading members' files (CSV/TSV/Parquet), clear errors, splits, partitions, loaders."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from tests.shared_data import DATASETS
from training.config import TrainingDataError
from training.data import (
    LabelledTable,
    load_labelled_table,
    load_table_for_config,
    make_loader,
    partition,
    split_train_test,
)

SMS_SPAM = DATASETS / "sms_spam.tsv"
LABELS = ("ham", "spam")


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _load(path, **options):
    options.setdefault("text_column", "text")
    options.setdefault("label_column", "label")
    options.setdefault("labels", LABELS)
    return load_labelled_table(path, **options)


def test_csv_with_quotes_and_whitespace_around_labels(tmp_path):
    path = _write(tmp_path / "m.csv", 'id,text,label\n1,"hello, world",ham\n2,"win ""cash"" now", spam \n')
    table = _load(path)
    assert table.texts == ("hello, world", 'win "cash" now')
    assert table.label_ids.tolist() == [0, 1] and table.label_counts() == {"ham": 1, "spam": 1}
    assert table.source == str(path)


def test_delimiter_is_sniffed_or_given(tmp_path):
    semicolons = _write(tmp_path / "m.txt", "text;label\nhi there;ham\nfree prize;spam\nok;ham\n")
    assert len(_load(semicolons)) == 3
    pipes = _write(tmp_path / "p.csv", "text|label\nhi, there|ham\nfree prize|spam\n")
    assert _load(pipes, delimiter="|").texts[0] == "hi, there"
    with pytest.raises(TrainingDataError, match="single character"):
        _load(pipes, delimiter="||")


def test_tsv_ignores_quotes(tmp_path):
    path = _write(tmp_path / "m.tsv", 'label\ttext\nham\t"unbalanced quote here\nspam\tok" fine\n')
    assert _load(path).texts == ('"unbalanced quote here', 'ok" fine')


def test_headerless_file_with_column_names(tmp_path):
    path = _write(tmp_path / "m.tsv", "ham\thello\nspam\twin now\n")
    table = _load(path, has_header=False, column_names=["label", "text"])
    assert table.texts == ("hello", "win now") and table.label_ids.tolist() == [0, 1]
    with pytest.raises(TrainingDataError, match="column_1"):
        _load(path, has_header=False)  # default names column_1, column_2: the message lists them
    with pytest.raises(TrainingDataError, match="2 columns but 3 column names"):
        _load(path, has_header=False, column_names=["label", "text", "x"])


def test_parquet_with_integer_labels(tmp_path):
    path = tmp_path / "m.parquet"
    pl.DataFrame({"body": ["a", "b", "c"], "y": [0, 1, 1]}).write_parquet(path)
    table = load_labelled_table(path, text_column="body", label_column="y", labels=("0", "1"))
    assert table.label_ids.tolist() == [0, 1, 1]
    with pytest.raises(TrainingDataError, match="available columns: \\['body', 'y'\\]"):
        load_labelled_table(path, text_column="text", label_column="y", labels=("0", "1"))


def test_missing_column_lists_the_available_ones(tmp_path):
    path = _write(tmp_path / "m.csv", "message,category\nhi,ham\n")
    with pytest.raises(TrainingDataError) as info:
        _load(path)
    message = str(info.value)
    assert "no column 'text' or 'label'" in message and "['message', 'category']" in message


def test_unknown_labels_are_listed_with_counts(tmp_path):
    rows = ["hi,ham"] * 3 + ["x,sapm"] * 2 + ["y,Spam", "z,"]
    path = _write(tmp_path / "m.csv", "text,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(TrainingDataError) as info:
        _load(path)
    message = str(info.value)
    assert "4 row(s)" in message and "['ham', 'spam']" in message
    assert "'sapm' (2 rows)" in message and "'Spam' (1 row)" in message and "'<missing>' (1 row)" in message


def test_empty_and_header_only_files(tmp_path):
    with pytest.raises(TrainingDataError, match=r"'empty\.csv' is empty"):
        _load(_write(tmp_path / "empty.csv", ""))
    with pytest.raises(TrainingDataError, match="no data rows"):
        _load(_write(tmp_path / "header.csv", "text,label\n"))
    with pytest.raises(TrainingDataError, match="does not exist"):
        _load(tmp_path / "absent.csv")


def test_missing_text_is_an_error(tmp_path):
    path = _write(tmp_path / "m.csv", "text,label\nhello,ham\n,spam\n")
    with pytest.raises(TrainingDataError, match=r"1 empty or missing value.*data row 2"):
        _load(path)


def test_ragged_lines_are_reported(tmp_path):
    path = _write(tmp_path / "m.csv", "text,label\nhello,ham\nwin,spam,extra,more\n")
    with pytest.raises(TrainingDataError, match=r"cannot parse 'm\.csv'"):
        _load(path)


@pytest.mark.skipif(not SMS_SPAM.is_file(), reason="shared dataset not present")
def test_sms_spam_collection():
    table = load_labelled_table(SMS_SPAM, text_column="SMS", label_column="Label", labels=LABELS)
    assert len(table) == 5574 and table.label_counts() == {"ham": 4827, "spam": 747}
    assert table.texts[0].startswith("Go until jurong point")
    # Read as headerless by mistake: the error says the first line looks like a header.
    with pytest.raises(TrainingDataError, match="looks like a header"):
        load_labelled_table(
            SMS_SPAM,
            text_column="text",
            label_column="label",
            labels=LABELS,
            has_header=False,
            column_names=["label", "text"],
        )


def test_load_table_for_config(tmp_path, make_config):
    path = _write(tmp_path / "m.csv", "text,label\nhello,ham\nwin,spam\n")
    assert len(load_table_for_config(path, make_config())) == 2


def _table(n_ham: int, n_spam: int) -> LabelledTable:
    labels = ["ham"] * n_ham + ["spam"] * n_spam
    return LabelledTable.from_lists(
        texts=[f"t{i}" for i in range(len(labels))], labels=labels, label_names=LABELS
    )


def test_split_is_stratified_disjoint_and_seeded():
    table = _table(90, 10)
    train, test = split_train_test(table, test_fraction=0.2, seed=3)
    assert test.label_counts() == {"ham": 18, "spam": 2} and train.label_counts() == {"ham": 72, "spam": 8}
    assert set(train.texts).isdisjoint(test.texts) and len(set(train.texts) | set(test.texts)) == 100
    again, _ = split_train_test(table, test_fraction=0.2, seed=3)
    other, _ = split_train_test(table, test_fraction=0.2, seed=4)
    assert again.texts == train.texts and other.texts != train.texts
    with pytest.raises(TrainingDataError, match="strictly between 0 and 1"):
        split_train_test(table, test_fraction=1.0, seed=0)


def test_iid_partition_covers_every_row_once():
    table = _table(90, 12)
    parts = partition(table, n_parts=3, seed=0)
    assert [p.label_counts() for p in parts] == [{"ham": 30, "spam": 4}] * 3
    texts = [t for p in parts for t in p.texts]
    assert sorted(texts) == sorted(table.texts)
    assert [p.texts for p in partition(table, n_parts=3, seed=0)] == [p.texts for p in parts]


def test_label_skew_gives_one_member_most_spam():
    table = _table(300, 100)
    parts = partition(table, n_parts=3, seed=0, label_skew={"spam": [8, 1, 1]})
    counts = [p.label_counts() for p in parts]
    assert [c["spam"] for c in counts] == [80, 10, 10]
    assert [c["ham"] for c in counts] == [100, 100, 100]
    assert sum(len(p) for p in parts) == 400
    with pytest.raises(TrainingDataError, match="unknown labels \\['scam'\\]"):
        partition(table, n_parts=3, seed=0, label_skew={"scam": [1, 1, 1]})
    with pytest.raises(TrainingDataError, match="must be 3 non-negative weights"):
        partition(table, n_parts=3, seed=0, label_skew={"spam": [1, 1]})
    with pytest.raises(TrainingDataError, match="part 1 of 2 would be empty"):
        partition(_table(1, 0), n_parts=2, seed=0)


def test_loader_batches_and_deterministic_shuffle(make_config):
    from training.models import build_model_and_tokenizer

    config = make_config(batch_size=4)
    _, tokenizer = build_model_and_tokenizer(config)
    # Text i has 2i+2 words, so a batch's token count tells which rows it holds.
    table = LabelledTable.from_lists(
        texts=["win cash " + "now " * (2 * i) for i in range(10)],
        labels=["spam", "ham"] * 5,
        label_names=LABELS,
    )

    def fingerprint(**options):
        loader = make_loader(table, tokenizer=tokenizer, config=config, **options)
        return [(int(b["attention_mask"].sum()), b["labels"].tolist()) for b in loader]

    batches = list(make_loader(table, tokenizer=tokenizer, config=config, shuffle=False))
    assert [b["labels"].shape[0] for b in batches] == [4, 4, 2]
    assert set(batches[0]) >= {"input_ids", "attention_mask", "labels"}
    assert batches[-1]["input_ids"].shape[1] == config.max_length  # long texts are truncated
    assert batches[0]["input_ids"].shape[1] < config.max_length  # short batches are not padded to max
    assert fingerprint(shuffle=True, seed=1) == fingerprint(shuffle=True, seed=1)
    assert fingerprint(shuffle=True, seed=1) != fingerprint(shuffle=True, seed=2)
    assert fingerprint(shuffle=True, seed=1) != fingerprint(shuffle=False)
