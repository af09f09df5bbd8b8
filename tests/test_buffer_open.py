"""Opening a buffer: any file name works; only damage is called damage (and keeps copies)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pytest

from linetap.buffers import BufferCorrupt, BufferError, DuckDBBuffer
from linetap.buffers.records import Event
from linetap.buffers.schema import DEFAULT_MEMORY_LIMIT
from linetap.drivers.samples import TELEMETRY_SCHEMA

NAMES = ["demo-buffer.duckdb", "heat-sealer-buffer.duckdb", "linetap-buffer.duckdb", "select.duckdb",
         "1line.duckdb", "line 3 – A/buffer.duckdb", "x.y.z.duckdb", "ünï-cödé.duckdb", "it's.duckdb",
         'say "hi".duckdb', "linetap_records.duckdb", "linetap_buffer.duckdb", "system.duckdb", "memory.duckdb",
         "main.duckdb", "temp.duckdb"]


def samples(n: int, start: float = 0.0) -> pa.Table:
    return pa.table({
        "device": ["sealer1"] * n, "tag": ["seal_temperature"] * n, "num": np.arange(start, start + n),
        "text": pa.nulls(n, pa.string()), "quality": pa.array([0] * n, pa.uint8()),
        "reason": pa.nulls(n, pa.string()), "source_ts": pa.nulls(n, pa.int64()),
        "agent_ts": pa.array([1_000] * n, pa.int64()), "vtype": pa.array([0] * n, pa.uint8())},
        schema=pa.schema(list(TELEMETRY_SCHEMA)))


@pytest.mark.parametrize("name", NAMES)
def test_any_file_name_opens_writes_reopens_and_exports(tmp_path, name):
    path = tmp_path / "line pc-1" / name
    buf = DuckDBBuffer(path, "sealing-line-1")
    buf.append(samples(10), events=[Event("alarm", 1, data={"what": "first"})])
    buf.close()
    buf = DuckDBBuffer(path, "sealing-line-1")
    try:
        buf.append(samples(5, 10.0), events=[Event("alarm", 2, data={"what": "second"})])
        assert buf.last_seq("telemetry") == 15 and buf.last_seq("events") == 2
        assert buf.read_telemetry(0, 100).column("num").to_pylist() == list(map(float, range(15)))
        for stream, rows in (("telemetry", 15), ("events", 2), ("units", 0)):
            assert buf.query_arrow(*buf.export_query(stream)).num_rows == rows
        assert [s.last_seq for s in buf.stats()] == [2, 0, 15]
    finally:
        buf.close()
    assert not list(path.parent.glob("*.corrupt-*"))


def test_a_folder_is_not_a_buffer(tmp_path):
    (tmp_path / "heat-sealer-buffer.duckdb").mkdir()
    with pytest.raises(BufferError, match="is a folder") as err:
        DuckDBBuffer(tmp_path / "heat-sealer-buffer.duckdb", "sealing-line-1")
    assert not isinstance(err.value, BufferCorrupt)
    assert not list(tmp_path.glob("*.corrupt-*"))


def test_a_file_where_the_folder_should_be(tmp_path):
    (tmp_path / "line1").write_text("a file")
    with pytest.raises(BufferError, match="cannot create the folder") as err:
        DuckDBBuffer(tmp_path / "line1" / "heat-sealer-buffer.duckdb", "sealing-line-1")
    assert not isinstance(err.value, BufferCorrupt)


def test_a_buffer_held_by_another_process_is_in_use_not_damaged(tmp_path):
    path = tmp_path / "heat-sealer-buffer.duckdb"
    DuckDBBuffer(path, "sealing-line-1").close()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from linetap.buffers import DuckDBBuffer
        buf = DuckDBBuffer({str(path)!r}, "sealing-line-1")
        print("open", flush=True)
        sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(BufferError, match=r"in use by another process \(.*PID") as err:
            DuckDBBuffer(path, "sealing-line-1")
        assert not isinstance(err.value, BufferCorrupt)
    finally:
        holder.communicate("", timeout=20)
    assert not list(tmp_path.glob("*.corrupt-*"))


def test_damage_keeps_copies_of_every_file_including_the_wal(tmp_path):
    path = tmp_path / "heat-sealer-buffer.duckdb"
    DuckDBBuffer(path, "sealing-line-1").close()
    path.write_bytes(b"\x00garbage" * 4096)
    wal = path.with_name(path.name + ".wal")
    wal.write_bytes(b"torn")
    with pytest.raises(BufferCorrupt, match="not a valid DuckDB database"):
        DuckDBBuffer(path, "sealing-line-1")
    kept = sorted(p.name.split(".corrupt-")[0] for p in tmp_path.glob("*.corrupt-*"))
    assert kept == [path.name, path.name + ".records", wal.name]


def test_a_duckdb_file_of_another_shape_is_named_not_damaged(tmp_path):
    import duckdb

    path = tmp_path / "heat-sealer-buffer.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE meta (k INTEGER)")  # somebody else's database
    con.close()
    with pytest.raises(BufferError) as err:
        DuckDBBuffer(path, "sealing-line-1")
    assert not isinstance(err.value, BufferCorrupt), err.value
    assert str(path) in str(err.value)
    assert not list(tmp_path.glob("*.corrupt-*"))


_KILLED_WRITER = """
import os, signal, sys
import numpy as np, pyarrow as pa
from linetap.buffers import DuckDBBuffer
from linetap.drivers.samples import TELEMETRY_SCHEMA
buf = DuckDBBuffer(sys.argv[1], "sealing-line-1")
buf._con.execute("SET checkpoint_threshold = '10GB'")  # killed between two checkpoints: a long WAL
n = 50_000
tags = pa.array([f"load_{i % 1000:04d}" for i in range(n)])
for k in range(int(sys.argv[2])):
    buf.append(pa.Table.from_arrays([
        pa.repeat(pa.scalar("sealer1"), n), tags, pa.array(np.random.rand(n)), pa.nulls(n, pa.string()),
        pa.array(np.zeros(n, np.uint8)), pa.nulls(n, pa.string()), pa.nulls(n, pa.int64()),
        pa.array(np.full(n, 1000 + k, np.int64)), pa.array(np.zeros(n, np.uint8))], schema=TELEMETRY_SCHEMA))
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_long_wal_left_by_kill_9_is_replayed_at_open(tmp_path):
    """Replaying a WAL larger than the buffer's memory limit spills to the temp directory during
    the ATTACH; the temp directory set after it was refused and the agent could not start again
    after a kill -9 (exit 3, "Cannot switch temporary directory"; found by the soak)."""
    import subprocess
    import sys

    folder = tmp_path / "line pc-1"
    folder.mkdir()
    path = folder / "heat-sealer-buffer.duckdb"
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(path), "20"], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    wal = path.with_name(path.name + ".wal")
    assert wal.stat().st_size > 2 * DEFAULT_MEMORY_LIMIT  # the case: more WAL than cache
    buf = DuckDBBuffer(path, "sealing-line-1")
    try:
        assert buf._con.execute("SELECT count(*), max(seq) FROM telemetry").fetchall() == [(1_000_000, 1_000_000)]
    finally:
        buf.close()
