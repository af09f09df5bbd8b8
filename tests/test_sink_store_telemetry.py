"""`Store` telemetry in-process, DuckDB and PostgreSQL: timestamps (us integers in the envelope) land
exact as TIMESTAMPTZ, null source times stay null, and a batch's inserted / duplicate counts and a
differing re-delivery come out right (the counts are the INSERT's own, no second join)."""

from __future__ import annotations

import pytest

from linetap.agent.sink.db import from_us, open_target
from linetap.agent.sink.store import Parsed, Store

AGENT = "ts-line"
T = 1_795_555_205_900_123  # us: the last digits must survive


def message(seq: int, n: int, value: float = 1.5) -> Parsed:
    return Parsed("telemetry", {
        "schema": "linetap.telemetry/2", "agent": AGENT, "seq": seq, "count": n, "device": "dev0", "station": "st1",
        "samples": {"tag": [f"t{q}" for q in range(seq, seq + n)], "value": [value] * n, "quality": ["good"] * n,
                    "reason": [None] * n, "source_ts": [T + 7 * q if q % 2 else None for q in range(seq, seq + n)],
                    "agent_ts": [T + 1_000_003 * q for q in range(seq, seq + n)]}})


@pytest.fixture(params=["duckdb", "postgresql"])
def target(request, tmp_path):
    spec = str(tmp_path / "s.duckdb") if request.param == "duckdb" else \
        request.getfixturevalue("postgres_server").new_database()
    t = open_target(spec)
    t.migrate()
    yield t
    t.close()


def test_telemetry_timestamps_exact_and_counts(target):
    store = Store(target)
    res = store.store([message(1, 4)])
    assert res.inserted["telemetry"] == 4 and res.duplicates == 0 and not res.problems
    # seqs 3..6: 3 and 4 held (same content), 5 and 6 new; then 1 again with another value
    res = store.store([message(3, 4), message(1, 1, value=9.0)])
    assert res.inserted["telemetry"] == 2 and res.duplicates == 3
    assert [(p[2], p[3]) for p in res.problems] == [(1, "duplicate_differs")]
    rows = target.execute("SELECT seq, source_ts, agent_ts, value FROM telemetry ORDER BY seq")
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5, 6]
    for seq, source_ts, agent_ts, value in rows:
        assert source_ts == (from_us(T + 7 * seq) if seq % 2 else None), seq
        assert agent_ts == from_us(T + 1_000_003 * seq), seq
        assert value == "1.5"


def test_the_poll_counter_of_report_by_exception_lands_as_a_sample(target):
    """A device with a deadband sends a `$polls` sample per poll (agent/deadband.py): the sink stores it
    like any sample, an integer kept an integer, so the MES tells 'unchanged' from 'lost'."""
    from linetap.agent.deadband import POLLS_TAG

    polls = Parsed("telemetry", {
        "schema": "linetap.telemetry/2", "agent": AGENT, "seq": 1, "count": 2, "device": "dev0", "station": "st1",
        "samples": {"tag": ["t_fast", POLLS_TAG], "value": [180.25, 17], "quality": ["good", "good"],
                    "reason": [None, None], "source_ts": [None, None], "agent_ts": [T, T]}})
    assert Store(target).store([polls]).inserted["telemetry"] == 2
    assert target.execute("SELECT tag, value FROM telemetry ORDER BY seq") == [("t_fast", "180.25"), (POLLS_TAG, "17")]
