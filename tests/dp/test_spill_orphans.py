"""Staged tables (decrypted rows on tmpfs) that a killed process left behind are removed by the next
dp worker to start; those of live processes, of other hosts and of other users are not."""

from __future__ import annotations

import os
import subprocess
import sys

import polars as pl

from clearinghouse.dp import PreparedData, TableSchema
from clearinghouse.dp.prepared import _host, remove_orphaned_spills

SCHEMA = TableSchema.from_dict({"columns": [{"name": "x", "type": "integer", "lower": 0, "upper": 9}]})


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _staged_dir(root, pid: int, host: str, suffix: str = "abc123_x"):
    path = root / f"chdp-{pid}@{host}-{suffix}"
    path.mkdir(mode=0o700)
    (path / "table.arrow").write_bytes(b"rows")
    return path


def test_only_dead_processes_staged_tables_of_this_host_are_removed(tmp_path):
    dead = _staged_dir(tmp_path, _dead_pid(), _host())
    mine = _staged_dir(tmp_path, os.getpid(), _host())
    parent = _staged_dir(tmp_path, os.getppid(), _host())
    elsewhere = _staged_dir(tmp_path, _dead_pid(), "another-host")
    unrelated = tmp_path / "chdp-notours"
    unrelated.mkdir()
    a_file = tmp_path / f"chdp-{_dead_pid()}@{_host()}-file"
    a_file.write_bytes(b"not a directory")

    assert remove_orphaned_spills(str(tmp_path)) == 1
    assert not dead.exists()
    assert mine.exists() and parent.exists() and elsewhere.exists() and unrelated.exists() and a_file.exists()
    assert remove_orphaned_spills(str(tmp_path)) == 0


def test_a_staged_table_is_named_after_its_process_and_survives_the_sweep_while_open(tmp_path):
    with PreparedData(SCHEMA, pl.DataFrame({"x": [1, 2, 3]}), spill_dir=str(tmp_path)) as prepared:
        (staged,) = list(tmp_path.iterdir())
        assert staged.name.startswith(f"chdp-{os.getpid()}@{_host()}-")
        assert remove_orphaned_spills(str(tmp_path)) == 0
        assert prepared.frame(("x",)).collect()["x"].to_list() == [1, 2, 3]
    assert list(tmp_path.iterdir()) == []


def test_no_spill_directory_no_sweep(tmp_path, monkeypatch):
    monkeypatch.setenv("CLEARINGHOUSE_DP_SPILL_DIR", "none")
    assert remove_orphaned_spills() == 0
    assert remove_orphaned_spills(str(tmp_path / "missing")) == 0
