"""Preflight for members: check, before joining a job, that the local data and the model load.

    python -m federation.flower.preflight --data-path /data/sms.tsv --text-column SMS \
        --label-column Label --labels ham,spam [--base-model minilm-l6] [--json] \
        [--expect-rows 5574 --expect-digest sha256:...]

Loads the file exactly as the ClientApp will (same loader, same columns and labels), builds the
model as the job will (LoRA adapters + head), and reports rows, label counts, the local
train/held-out split and how many held-out rows duplicate a training row (exactly or nearly: a job
drops them from the held-out split unless its ``test-dedup`` says otherwise), text lengths, the
file's content digest (``training.digest``), parameter counts and the device. Any problem is
reported as one clear message (exit status 2), the same message the job would fail with later.
With ``--expect-rows``/``--expect-digest`` (a private job's registered version, as its page shows
them to the member) a file that is not that version fails with ``data_mismatch``, as the ClientApp
would refuse it before training.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from federation.flower.settings import NODE_DATA_PATH, NODE_LABEL_COLUMN, NODE_TEXT_COLUMN

if TYPE_CHECKING:  # the ML stack loads when a check runs, not when the module does
    from training.config import TrainConfig
    from training.data import LabelledTable


def preflight(
    *,
    data_path: str,
    text_column: str,
    label_column: str,
    labels: list[str],
    base_model: str = "minilm-l6",
    delimiter: str | None = None,
    device: str | None = None,
    max_length: int = 128,
    test_fraction: float = 0.2,
    seed: int = 0,
    lora: bool = True,
    expect_rows: int | None = None,
    expect_digest: str | None = None,
    quote_char: str | None = "loader-default",
) -> dict[str, Any]:
    """Return a JSON-serialisable report; raises ``TrainingError`` subclasses with clear messages
    (``data_mismatch`` when the file's rows or digest are not the expected ones)."""
    from training.config import TrainConfig
    from training.data import load_table_for_config

    started = time.perf_counter()
    config = TrainConfig(
        labels=tuple(labels),
        base_model=base_model,
        text_column=text_column,
        label_column=label_column,
        max_length=max_length,
        seed=seed,
        lora=lora,
    )
    options: dict[str, Any] = {"delimiter": delimiter} if delimiter else {}
    if quote_char != "loader-default":  # as the registered upload was parsed (its version page says)
        options["quote_char"] = quote_char
    table = load_table_for_config(data_path, config, **options)
    data, data_warnings = _data_report(table, test_fraction=test_fraction, seed=seed)
    data["content"] = _content_report(table, expect_rows=expect_rows, expect_digest=expect_digest)
    model, model_warnings = _model_report(table, config, device=device)
    return {
        "ok": True,
        "data_path": str(data_path),
        **data,
        "base_model": base_model,
        **model,
        "warnings": data_warnings + model_warnings,
        "seconds": round(time.perf_counter() - started, 2),
        "node_config": (
            f"{NODE_DATA_PATH}='{data_path}' {NODE_TEXT_COLUMN}='{text_column}' {NODE_LABEL_COLUMN}='{label_column}'"
        ),
    }


def _data_report(
    table: LabelledTable, *, test_fraction: float, seed: int
) -> tuple[dict[str, Any], list[str]]:
    """Rows, label counts, the local train/held-out split, its held-out rows that duplicate a
    training row, and text lengths; and warnings."""
    from training.data import deduplicate_test_split, split_train_test

    counts = table.label_counts()
    warnings = []
    empty = [label for label, n in counts.items() if n == 0]
    if empty:
        warnings.append(f"no rows with label(s) {empty!r}: this member cannot help the model learn them")
    train_table, test_table = split_train_test(table, test_fraction=test_fraction, seed=seed)
    _, duplicates = deduplicate_test_split(train_table, test_table, mode="report")
    if duplicates.found:
        warnings.append(
            f"{duplicates.found} of the {len(test_table)} held-out rows duplicate a training row (exactly "
            "or nearly): a job drops them from the held-out split unless its test-dedup setting says otherwise"
        )
    lengths = sorted(len(t) for t in table.texts)
    report = {
        "rows": len(table),
        "label_counts": counts,
        "train_rows": len(train_table),
        "held_out_rows": len(test_table),
        "held_out_duplicates": duplicates.found,
        "text_chars": {"min": lengths[0], "median": lengths[len(lengths) // 2], "max": lengths[-1]},
    }
    return report, warnings


def _content_report(
    table: LabelledTable, *, expect_rows: int | None, expect_digest: str | None
) -> dict[str, Any]:
    """The file's row count and content digest, and whether they are the expected ones (None when
    nothing is expected); refuses (``data_mismatch``) a file that is not what was expected."""
    from training.config import TrainingDataError
    from training.digest import labelled_table_digest

    local = labelled_table_digest(table)
    report: dict[str, Any] = {"rows": local.rows, "digest": local.digest, "matches": None}
    if expect_rows is None and expect_digest is None:
        return report
    problems = []
    if expect_rows is not None and local.rows != expect_rows:
        problems.append(f"{local.rows} rows, expected {expect_rows}")
    if expect_digest is not None and local.digest != expect_digest.strip().lower():
        problems.append(f"content digest {local.digest}, expected {expect_digest.strip()}")
    if problems:
        raise TrainingDataError(
            "data_mismatch: this file is not the registered dataset version the job was priced on: "
            + "; ".join(problems)
            + " (check the file, its columns and delimiter; a version repaired at ingestion stores fewer "
            "or changed rows)"
        )
    report["matches"] = True
    return report


def _model_report(
    table: LabelledTable, config: TrainConfig, *, device: str | None
) -> tuple[dict[str, Any], list[str]]:
    """The model as the job builds it (parameters, bytes per update, device); and a warning when
    texts will be truncated."""
    from training.models import build_model_and_tokenizer, count_parameters, select_device
    from training.params import get_trainable_state, state_nbytes

    model, tokenizer = build_model_and_tokenizer(config)
    dev = select_device(device)
    trainable, total = count_parameters(model)
    sample = list(table.texts[:256])
    token_counts = [len(ids) for ids in tokenizer(sample, truncation=False)["input_ids"]]
    truncated = sum(n > config.max_length for n in token_counts)
    warnings = []
    if truncated:
        warnings.append(
            f"{truncated} of the first {len(sample)} texts exceed max_length={config.max_length} tokens "
            "and will be truncated"
        )
    report = {
        "model_type": getattr(getattr(model, "config", None), "model_type", None),
        "total_parameters": total,
        "trainable_parameters": trainable,
        "trainable_bytes": state_nbytes(get_trainable_state(model)),
        "device": str(dev),
        "cuda_available": dev.type == "cuda",
    }
    return report, warnings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m federation.flower.preflight", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--data-path", required=True)
    parser.add_argument("--text-column", required=True)
    parser.add_argument("--label-column", required=True)
    parser.add_argument("--labels", required=True, help="comma-separated, in the job's order, e.g. ham,spam")
    parser.add_argument("--base-model", default="minilm-l6", help="'minilm-l6' or a local model directory")
    parser.add_argument(
        "--delimiter", default=None, help="for delimited text files (default: by suffix / sniffed)"
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--expect-rows", type=int, default=None, help="a private job's registered row count: refuse any other"
    )
    parser.add_argument(
        "--expect-digest", default=None, help="a private job's registered content digest (sha256:...)"
    )
    parser.add_argument(
        "--quote-char",
        default=None,
        help="read delimited text with this quote character, or 'none' for no quoting, as the registered "
        "version's upload was parsed (default: none for tab-separated text, \" otherwise)",
    )
    args = parser.parse_args(argv)

    from training.config import TrainingError

    labels = [s.strip() for s in args.labels.split(",") if s.strip()]
    delimiter = "\t" if args.delimiter in ("\\t", "tab") else args.delimiter
    try:
        report = preflight(
            data_path=args.data_path,
            text_column=args.text_column,
            label_column=args.label_column,
            labels=labels,
            base_model=args.base_model,
            delimiter=delimiter,
            device=args.device,
            max_length=args.max_length,
            expect_rows=args.expect_rows,
            expect_digest=args.expect_digest,
            quote_char=(
                "loader-default"
                if args.quote_char is None
                else None
                if args.quote_char.lower() == "none"
                else args.quote_char
            ),
        )
    except TrainingError as exc:
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc)}))
        else:
            print(f"preflight FAILED: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    _print_report(report)
    return 0


def _print_report(report: Mapping[str, Any]) -> None:
    print(f"preflight OK ({report['seconds']} s)")
    print(f"  data:    {report['data_path']}: {report['rows']} rows, labels {report['label_counts']}")
    print(
        f"           local split: {report['train_rows']} train / {report['held_out_rows']} held out "
        f"({report['held_out_duplicates']} of them duplicating a training row)"
    )
    print(f"           text length (chars): {report['text_chars']}")
    content = report["content"]
    verdict = {None: "", True: " (matches the expected version)"}[content["matches"]]
    print(f"           content: {content['rows']} rows, digest {content['digest']}{verdict}")
    print(
        f"  model:   {report['base_model']} ({report['model_type']}): {report['total_parameters']:,} parameters, "
        f"{report['trainable_parameters']:,} trainable ({report['trainable_bytes']:,} bytes exchanged per update)"
    )
    print(f"  device:  {report['device']}")
    for warning in report["warnings"]:
        print(f"  warning: {warning}")
    print(f'  SuperNode: --node-config "{report["node_config"]}"')


if __name__ == "__main__":
    sys.exit(main())
