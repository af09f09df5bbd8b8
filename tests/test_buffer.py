"""The buffer contract, on a real DuckDB file."""

from __future__ import annotations

import asyncio
import threading

import pyarrow as pa
import pytest

from linetap.buffers import AsyncBuffer, BufferCorrupt, BufferError, DuckDBBuffer
from linetap.buffers.integrity import GENESIS, record_hash
from linetap.buffers.records import Event
from linetap.drivers.samples import Quality, SampleBatch

AGENT = "line1-agent"


def batch(device: str, n: int, start: float = 0.0, ts: int = 1_000) -> pa.Table:
    return SampleBatch(
        device=device,
        tag=[f"t{i}" for i in range(n)],
        value=[start + i for i in range(n)],
        quality=[Quality.GOOD] * n,
        reason=[None] * n,
        agent_ts=ts,
    ).to_arrow()


@pytest.fixture
def path(tmp_path):
    return tmp_path / "buffer.duckdb"


def test_seq_is_contiguous_per_stream_and_starts_at_one(path):
    buf = DuckDBBuffer(path, AGENT)
    r1 = buf.append(batch("d1", 3))
    r2 = buf.append(batch("d2", 2), events=[Event("device_state", 5, "d1", "s1", {"state": "lost"})])
    assert r1.telemetry == (1, 3)
    assert r2.telemetry == (4, 5)
    assert [e.seq for e in r2.events] == [1]
    assert r2.events[0].id == f"{AGENT}/events/1"
    table = buf.read_telemetry(0, 100)
    assert table.column("seq").to_pylist() == [1, 2, 3, 4, 5]
    assert table.column("device").to_pylist() == ["d1"] * 3 + ["d2"] * 2
    assert table.column("num").to_pylist() == [0.0, 1.0, 2.0, 0.0, 1.0]
    buf.close()


def test_values_of_every_kind_round_trip(path):
    buf = DuckDBBuffer(path, AGENT)
    values = [1.5, 7, True, "SN-000001", None, 2**60, b"\x01\xff"]
    n = len(values)
    buf.append(SampleBatch("d", [f"v{i}" for i in range(n)], values, [0] * 4 + [2] + [0] * 2,
                           [None] * 4 + ["timeout after 1.0s"] + [None] * 2, 42, [None] * n).to_arrow())
    rows = buf.read_telemetry(0, 10).to_pylist()
    assert [r["num"] for r in rows] == [1.5, 7.0, 1.0, None, None, None, None]
    assert [r["text"] for r in rows] == [None, None, None, "SN-000001", None, str(2**60), "01ff"]
    assert rows[4]["quality"] == Quality.BAD and rows[4]["reason"] == "timeout after 1.0s"
    assert all(r["agent_ts"] == 42 for r in rows)
    buf.close()


def test_read_after_cursor_is_ordered_and_limited(path):
    buf = DuckDBBuffer(path, AGENT)
    for i in range(5):
        buf.append(batch("d", 100, start=i * 100))
    part = buf.read_telemetry(250, 100)
    assert part.column("seq").to_pylist() == list(range(251, 351))
    assert buf.read_telemetry(500, 10).num_rows == 0
    buf.close()


def test_seq_and_hash_chain_continue_after_reopen(path):
    buf = DuckDBBuffer(path, AGENT)
    buf.append(batch("d", 10), events=[Event("a", 1)], units=[{"serial": "SN-1"}])
    last_hash = buf.last_hash("events")
    buf.close()

    buf = DuckDBBuffer(path, AGENT)
    result = buf.append(batch("d", 2), events=[Event("b", 2)], units=[{"serial": "SN-2"}])
    assert result.telemetry == (11, 12)
    assert result.events[0].seq == 2 and result.events[0].prev_hash == last_hash
    assert result.units[0].seq == 2
    events = buf.read_records("events", 0, 10)
    prev = GENESIS
    for rec in events:
        assert rec.prev_hash == prev
        assert rec.hash == record_hash(prev, id=rec.id, stream=rec.stream, seq=rec.seq,
                                       recorded_at=rec.recorded_at, body=rec.body)
        prev = rec.hash
    buf.close()


def test_seq_survives_retention_deleting_every_row(path):
    buf = DuckDBBuffer(path, AGENT)
    buf.append(batch("d", 10, ts=1))
    buf.ack("mqtt", "telemetry", 10)
    assert buf.purge_delivered("mqtt", older_than_us=2)["telemetry"] == 10
    assert buf.read_telemetry(0, 100).num_rows == 0
    buf.close()
    buf = DuckDBBuffer(path, AGENT)
    assert buf.append(batch("d", 1)).telemetry == (11, 11)
    buf.close()


def test_retention_keeps_unacknowledged_and_recent_rows(path):
    buf = DuckDBBuffer(path, AGENT)
    buf.append(batch("d", 10, ts=1))
    buf.append(batch("d", 10, ts=100))
    buf.ack("mqtt", "telemetry", 15)
    deleted = buf.purge_delivered("mqtt", older_than_us=50)
    assert deleted["telemetry"] == 10  # seq 1-10: acknowledged and old; 11-15 acknowledged but recent
    assert buf.read_telemetry(0, 100).column("seq").to_pylist() == list(range(11, 21))
    buf.close()


def test_cursor_per_sink_never_moves_back(path):
    buf = DuckDBBuffer(path, AGENT)
    buf.append(batch("d", 100))
    assert buf.cursor("mqtt", "telemetry") == 0
    buf.ack("mqtt", "telemetry", 60)
    buf.ack("mqtt", "telemetry", 40)
    assert buf.cursor("mqtt", "telemetry") == 60
    assert buf.cursor("other", "telemetry") == 0
    with pytest.raises(ValueError):
        buf.ack("mqtt", "telemetry", 101)  # beyond what was ever written
    buf.close()
    buf = DuckDBBuffer(path, AGENT)
    assert buf.cursor("mqtt", "telemetry") == 60
    stats = {s.stream: s for s in buf.stats("mqtt")}
    assert stats["telemetry"].pending == 40 and stats["telemetry"].last_seq == 100
    buf.close()


def test_failed_append_leaves_nothing_behind(path):
    buf = DuckDBBuffer(path, AGENT)
    buf.append(batch("d", 5))
    with pytest.raises(TypeError):
        buf.append(batch("d", 5), units=[{"not json": object()}])
    assert buf.last_seq("telemetry") == 5
    assert buf.read_telemetry(0, 100).num_rows == 5
    assert buf.append(batch("d", 1)).telemetry == (6, 6)
    buf.close()


def test_other_agents_buffer_is_refused(path):
    DuckDBBuffer(path, AGENT).close()
    with pytest.raises(BufferError, match="belongs to agent"):
        DuckDBBuffer(path, "another-agent")


def test_corrupt_file_is_refused_and_kept(path):
    path.write_bytes(b"this is not a database" * 1000)
    with pytest.raises(BufferCorrupt, match="will not start over a damaged buffer"):
        DuckDBBuffer(path, AGENT)
    assert path.read_bytes().startswith(b"this is not a database")  # untouched
    assert list(path.parent.glob("buffer.duckdb.corrupt-*"))


async def test_async_buffer_runs_telemetry_on_one_thread_and_records_on_another(path):
    buf = await AsyncBuffer.open(path, AGENT)
    threads: dict[str, set[int]] = {"telemetry": set(), "records": set()}

    def spy(kind, original):
        def call(*args):
            threads[kind].add(threading.get_ident())
            return original(*args)
        return call

    buf._buffer.append_telemetry = spy("telemetry", buf._buffer.append_telemetry)
    buf._buffer.append_records = spy("records", buf._buffer.append_records)
    await asyncio.gather(*(buf.append(batch("d", 10), events=[Event("x", i)]) for i in range(20)))
    assert len(threads["telemetry"]) == 1 and len(threads["records"]) == 1
    assert threads["telemetry"] != threads["records"] and threading.get_ident() not in threads["telemetry"]
    assert await buf.last_seq("telemetry") == 200
    table = await buf.read_telemetry(0, 1000)
    assert table.column("seq").to_pylist() == list(range(1, 201))
    events = await buf.read_records("events", 0, 100)
    assert [r.seq for r in events] == list(range(1, 21))
    await buf.close()


def test_events_live_in_the_records_file_beside_the_buffer(path):
    buf = DuckDBBuffer(path, AGENT)
    buf.append(batch("d", 5), events=[Event("nonconformance", 1, "d")], units=[{"serial": "SN1"}])
    buf.close()
    records = path.with_name(path.name + ".records")
    assert records.exists()
    import duckdb

    con = duckdb.connect(str(records), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM events").fetchall()[0][0] == 1
        assert con.execute("SELECT count(*) FROM units").fetchall()[0][0] == 1
    finally:
        con.close()
    buf = DuckDBBuffer(path, AGENT)  # reopened: both heads continue
    assert (buf.last_seq("telemetry"), buf.last_seq("events"), buf.last_seq("units")) == (5, 1, 1)
    buf.close()


def test_a_missing_or_foreign_records_file_is_refused(path, tmp_path):
    buf = DuckDBBuffer(path, AGENT)
    buf.append(events=[Event("x", 1)])
    buf.close()
    records = path.with_name(path.name + ".records")
    kept = records.read_bytes()
    records.unlink()
    with pytest.raises(BufferCorrupt, match="no records file"):
        DuckDBBuffer(path, AGENT)
    other = tmp_path / "other.duckdb"
    DuckDBBuffer(other, AGENT).close()
    records.write_bytes(other.with_name(other.name + ".records").read_bytes())
    with pytest.raises(BufferError, match="belongs to another buffer"):
        DuckDBBuffer(path, AGENT)
    records.write_bytes(kept)
    buf = DuckDBBuffer(path, AGENT)
    assert buf.last_seq("events") == 1
    buf.close()


def test_an_interrupted_size_cap_drop_is_finished_at_open(path):
    """The gap event is committed before the delete; a crash in between must not resurrect the rows."""
    buf = DuckDBBuffer(path, AGENT)
    buf.append(batch("d", 1000))
    buf.append_records([Event("gap", 1, data={"stream": "telemetry", "seq_first": 1, "seq_last": 400,
                                               "count": 400})])  # as if the process died before the delete
    buf.close()
    buf = DuckDBBuffer(path, AGENT)
    assert buf.read_telemetry(0, 1000).column("seq").to_pylist() == list(range(401, 1001))
    buf.close()


def test_every_call_leaves_the_connection_ready_for_the_next(path):
    """DuckDB 2 refuses new work while a result is unfinished: no call may leave one behind."""
    buf = DuckDBBuffer(path, AGENT)
    buf.append(batch("d", 10))
    calls = [
        lambda: buf.ack("mqtt", "telemetry", 3),
        lambda: buf.cursor("mqtt", "telemetry"),
        lambda: buf.stats("mqtt"),
        lambda: buf.purge_delivered("mqtt", 0),
        lambda: buf.read_records("events", 0, 5),
        lambda: buf.read_telemetry(0, 3),
        lambda: buf.append(batch("d", 1)),
    ]
    for call in calls:
        call()
        assert buf.read_telemetry(0, 2).num_rows == 2
        assert buf.cursor("mqtt", "telemetry") == 3
    buf.close()


def test_size_cap_drops_oldest_unsent_telemetry_with_gap_events_and_keeps_records(path):
    buf = DuckDBBuffer(path, AGENT)
    buf.append(events=[Event("device_state", 1, "d", "s", {"state": "connected"})], units=[{"serial": "SN-1"}])
    for i in range(40):
        buf.append(batch("d", 25_000, start=i * 25_000, ts=i))
    buf.ack("mqtt", "telemetry", 100_000)  # the first 100k were delivered
    cap = 4 * 2**20
    assert buf.used_bytes() > cap
    result = buf.enforce_cap(cap, "mqtt")
    assert buf.used_bytes() <= cap
    assert result.purged == 100_000 and result.gaps and not result.over_cap
    remaining = buf.read_telemetry(0, 2_000_000).column("seq").to_pylist()
    dropped = set()
    for gap in result.gaps:
        d = gap.data
        assert d["count"] == d["seq_last"] - d["seq_first"] + 1
        dropped.update(range(d["seq_first"], d["seq_last"] + 1))
    # exactly what the gap events say is gone, oldest first; the rest is intact and contiguous
    assert sorted(dropped) == list(range(100_001, min(remaining)))
    assert remaining == list(range(min(remaining), 1_000_001))
    gaps = [r for r in buf.read_records("events", 0, 100) if r.body["kind"] == "gap"]
    assert [g.body["seq_first"] for g in gaps] == [g.data["seq_first"] for g in result.gaps]
    assert len(buf.read_records("units", 0, 10)) == 1
    buf.close()


def test_size_cap_never_drops_records_and_says_so(path):
    buf = DuckDBBuffer(path, AGENT)
    buf.append(units=[{"serial": f"SN-{i}", "pad": "x" * 200} for i in range(5000)])
    result = buf.enforce_cap(1, "mqtt")
    assert result.over_cap and not result.gaps
    assert len(buf.read_records("units", 0, 10_000)) == 5000
    buf.close()


def test_gaps_are_counted_for_status(path):
    buf = DuckDBBuffer(path, AGENT)
    assert buf.gaps() == (0, 0)
    for i in range(40):
        buf.append(batch("d", 25_000, ts=i))
    result = buf.enforce_cap(4 * 2**20, "mqtt")
    assert buf.gaps() == (len(result.gaps), sum(g.data["count"] for g in result.gaps))
    buf.close()


def test_reads_step_over_deleted_ranges(path):
    buf = DuckDBBuffer(path, AGENT)
    for i in range(10):
        buf.append(batch("d", 1000, ts=i))
    buf._con.execute("DELETE FROM telemetry WHERE seq BETWEEN 2001 AND 7500").fetchall()  # as the size cap does
    seqs, cursor = [], 0
    while True:
        table = buf.read_telemetry(cursor, 1000)
        if table.num_rows == 0:
            break
        seqs.extend(table.column("seq").to_pylist())
        cursor = seqs[-1]
    assert seqs == [*range(1, 2001), *range(7501, 10_001)]
    buf.close()


def test_duckdb_cache_is_bounded_by_memory_limit(path):
    """DuckDB's own default (80% of RAM) would let the agent grow with the buffer file."""
    buf = DuckDBBuffer(path, "a1")
    try:
        assert buf._con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0] == "16.0 MiB"
    finally:
        buf.close()
    buf = DuckDBBuffer(path, "a1", memory_limit=256 * 2**20)
    try:
        assert buf._con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0] == "256.0 MiB"
    finally:
        buf.close()


def test_memory_limit_is_configurable_and_has_a_floor():
    from pydantic import ValidationError

    from linetap.config.models import BufferConfig

    assert BufferConfig().memory_limit == 16 * 2**20
    assert BufferConfig.model_validate({"memory_limit": "256MiB"}).memory_limit == 256 * 2**20
    # 8 MiB: DuckDB's checkpoint could not pin its blocks at 317k samples/s and invalidated the
    # buffer (test_a_checkpoint_that_invalidates_the_buffer_is_survived)
    with pytest.raises(ValidationError, match="memory_limit"):
        BufferConfig.model_validate({"memory_limit": "8MiB"})
    assert BufferConfig.model_validate({"memory_limit": "16MiB"}).memory_limit == 16 * 2**20


def test_a_first_start_cut_off_before_the_records_file_existed_begins_again(path):
    import duckdb

    from linetap.buffers.schema import _DDL

    con = duckdb.connect(str(path))  # killed right after creating the buffer file's tables
    con.execute(_DDL)
    con.close()
    buf = DuckDBBuffer(path, AGENT)
    buf.append(events=[Event("x", 1)])
    assert buf.last_seq("events") == 1
    buf.close()


def test_size_cap_never_drops_telemetry_the_forwarder_already_took(path):
    """Rows read for sending but not yet acknowledged are in flight: dropping them would report
    a gap for samples the MES then receives."""
    buf = DuckDBBuffer(path, AGENT)
    for i in range(40):
        buf.append(batch("d", 25_000, start=i * 25_000, ts=i))
    taken = buf.read_telemetry(0, 20_000).column("seq").to_pylist()
    assert taken[-1] == 20_000
    result = buf.enforce_cap(4 * 2**20, "mqtt")
    assert result.gaps and min(g.data["seq_first"] for g in result.gaps) == 20_001
    assert buf.read_telemetry(0, 20_000).column("seq").to_pylist() == taken
    buf.close()
