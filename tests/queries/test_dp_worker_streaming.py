"""The dp worker runs OpenDP's plans on Polars' streaming engine (issue 15; the answers are those of
the in-memory engine: tests/dp/test_streaming_engine.py)."""

from __future__ import annotations

import os


def test_the_dp_worker_turns_streaming_on_unless_told_not_to(monkeypatch, tmp_path):
    from clearinghouse.queries import tasks

    monkeypatch.setenv("CLEARINGHOUSE_DP_SPILL_DIR", str(tmp_path))  # its sweep: not the host's /dev/shm
    monkeypatch.delenv(tasks.STREAMING_ENV, raising=False)
    tasks._worker_starts()
    assert os.environ[tasks.STREAMING_ENV] == "1"
    monkeypatch.setenv(tasks.STREAMING_ENV, "0")
    tasks._worker_starts()
    assert os.environ[tasks.STREAMING_ENV] == "0"
