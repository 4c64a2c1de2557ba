"""Staged tables (decrypted rows on tmpfs) that a killed process left behind are removed by the next
dp worker to start; those whose owner still runs are not, whoever that owner is (its lock, not its
process id, says it is alive: containers sharing a tmpfs have process ids of their own)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import polars as pl

from clearinghouse.dp import PreparedData, TableSchema
from clearinghouse.dp.prepared import remove_orphaned_spills

SCHEMA = TableSchema.from_dict({"columns": [{"name": "x", "type": "integer", "lower": 0, "upper": 9}]})

# A process that stages a table in `spill`, says so, then waits on stdin (alive) until it is killed.
STAGER = textwrap.dedent(
    """
    import sys
    import polars as pl
    from clearinghouse.dp import PreparedData, TableSchema
    schema = TableSchema.from_dict({"columns": [{"name": "x", "type": "integer", "lower": 0, "upper": 9}]})
    staged = PreparedData(schema, pl.DataFrame({"x": [1, 2, 3]}), spill_dir=sys.argv[1])
    print("staged", flush=True)
    sys.stdin.read()
    """
)


def _stager(spill) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", STAGER, str(spill)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "staged"
    return process


def _staged(spill) -> list[str]:
    return sorted(path.name for path in spill.iterdir())


def test_a_killed_owners_table_goes_a_live_owners_stays(tmp_path):
    alive = _stager(tmp_path)
    killed = _stager(tmp_path)
    both = _staged(tmp_path)
    assert len(both) == 2 and all(name.startswith("chdp-") for name in both)
    killed.kill()
    killed.wait()
    try:
        assert remove_orphaned_spills(str(tmp_path)) == 1
        (left,) = _staged(tmp_path)
        assert left.startswith(f"chdp-{alive.pid}@")
        assert (tmp_path / left / ".owner.lock").exists() and any((tmp_path / left).glob("*.arrow"))
        assert remove_orphaned_spills(str(tmp_path)) == 0
    finally:
        alive.kill()
        alive.wait()
    assert remove_orphaned_spills(str(tmp_path)) == 1
    assert _staged(tmp_path) == []


def test_this_processs_open_table_stays_and_its_own_close_removes_it(tmp_path):
    with PreparedData(SCHEMA, pl.DataFrame({"x": [1, 2, 3]}), spill_dir=str(tmp_path)) as prepared:
        assert remove_orphaned_spills(str(tmp_path)) == 0
        assert prepared.frame(("x",)).collect()["x"].to_list() == [1, 2, 3]
    assert _staged(tmp_path) == []


def test_directories_it_cannot_judge_are_left_alone(tmp_path):
    older_release = tmp_path / "chdp-1234@host-abcdef"  # no owner's lock: not ours to judge
    older_release.mkdir()
    (older_release / "t.arrow").write_bytes(b"x")
    other = tmp_path / "unrelated"
    other.mkdir()
    a_file = tmp_path / "chdp-file"
    a_file.write_bytes(b"x")
    assert remove_orphaned_spills(str(tmp_path)) == 0
    assert older_release.exists() and other.exists() and a_file.exists()


def test_no_spill_directory_no_sweep(tmp_path, monkeypatch):
    monkeypatch.setenv("CLEARINGHOUSE_DP_SPILL_DIR", "none")
    assert remove_orphaned_spills() == 0
    assert remove_orphaned_spills(str(tmp_path / "missing")) == 0
