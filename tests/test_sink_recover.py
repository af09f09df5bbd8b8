"""The sink asking agents for what it misses (`agent/sink/recover.py`), on a real sink database
(DuckDB file, the sink's migrations), with the clock driven by the test: a hole is asked for
only once it is `after` seconds old, again with doubling waits, and closed as recovered, covered
by a gap event, or unrecovered (the agent no longer holds it, or no answer); each step is a row
of `sink_replays` that `linetap audit` reports."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from linetap.agent.sink.audit import audit, render
from linetap.agent.sink.db import open_target
from linetap.agent.sink.recover import REQUEST_SCHEMA, Recovery, topic_root
from linetap.agent.sink.store import parse_payload

AGENT = "line1-agent"
ROOT = "acme/cork/packaging/line1"


@pytest.fixture
def target(tmp_path):
    folder = tmp_path / "mes side"
    folder.mkdir()
    t = open_target(str(folder / "mes-sink.duckdb"))
    t.migrate()
    yield t
    t.close()


def held(t, stream: str, *ranges: tuple[int, int]) -> None:
    """What the sink's bookkeeping says it holds of `stream` (sink_streams, as refresh_streams writes it)."""
    n = sum(b - a + 1 for a, b in ranges)
    with t.transaction():
        t.execute("DELETE FROM sink_streams WHERE agent = ? AND stream = ?", (AGENT, stream))
        t.execute("INSERT INTO sink_streams VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                  (AGENT, stream, ranges[0][0], ranges[-1][1], n, ranges[-1][1] - n,
                   orjson.dumps([list(r) for r in ranges]).decode(), datetime.now(UTC)))


def event(t, seq: int, kind: str, **body) -> None:
    with t.transaction():
        t.execute("INSERT INTO events (agent, seq, id, kind, recorded_at, body, prev_hash, hash, received_at) "
                  "VALUES (?, ?, ?, ?, 0, ?, '', '', ?)",
                  (AGENT, seq, f"{AGENT}/events/{seq}", kind, orjson.dumps({"kind": kind, **body}).decode(),
                   datetime.now(UTC)))


def replays(t) -> list[tuple]:
    return t.execute("SELECT stream, seq_first, seq_last, outcome, attempt FROM sink_replays ORDER BY noted_at, attempt")


class Asked:
    def __init__(self) -> None:
        self.requests: list[tuple[str, dict]] = []
        self.connected = True

    def __call__(self, topic: str, payload: bytes) -> bool:
        if not self.connected:
            return False
        self.requests.append((topic, orjson.loads(payload)))
        return True

    def spans(self) -> list[tuple[str, int, int]]:
        return [(r["stream"], r["from_seq"], r["to_seq"]) for _, r in self.requests]


def test_topic_root_from_what_the_agent_publishes() -> None:
    assert topic_root(f"{ROOT}/sealer-1/telemetry") == ROOT
    assert topic_root(f"{ROOT}/_line/events") == ROOT
    assert topic_root(f"{ROOT}/_agent/{AGENT}/status") == ROOT
    assert topic_root("telemetry") is None


def test_a_hole_is_asked_for_once_old_enough_then_again_with_doubling_waits(target) -> None:
    asked = Asked()
    rec = Recovery(target, "mes-sink-1", asked, after=10, attempts=3)
    rec.saw(AGENT, f"{ROOT}/sealer-1/units")
    held(target, "units", (1, 4), (8, 20))
    rec.check(100.0)
    rec.check(109.0)
    assert asked.requests == []  # out-of-order arrival is expected for a while
    rec.check(110.0)
    topic, req = asked.requests[0]
    assert topic == f"{ROOT}/_agent/{AGENT}/replay"
    assert req == {"schema": REQUEST_SCHEMA, "stream": "units", "from_seq": 5, "to_seq": 7,
                   "requested_by": "mes-sink-1"}
    rec.check(129.0)
    assert len(asked.requests) == 1
    rec.check(130.0)  # 2 x after
    rec.check(169.0)
    assert len(asked.requests) == 2
    rec.check(170.0)  # 4 x after
    assert asked.spans() == [("units", 5, 7)] * 3
    rec.check(250.0)  # 8 x after: the attempts are used up
    assert len(asked.requests) == 3
    assert replays(target)[-1] == ("units", 5, 7, "unrecovered", 3)
    rec.check(1000.0)
    assert len(asked.requests) == 3  # not asked again
    assert [r[3] for r in replays(target)] == ["requested"] * 3 + ["unrecovered"]


def test_a_range_that_arrives_is_recorded_as_recovered(target) -> None:
    asked = Asked()
    rec = Recovery(target, "mes-sink-1", asked, after=5)
    rec.saw(AGENT, f"{ROOT}/sealer-1/telemetry")
    held(target, "telemetry", (1, 500), (1001, 3000))
    rec.check(0.0)
    rec.check(5.0)
    assert asked.spans() == [("telemetry", 501, 1000)]
    held(target, "telemetry", (1, 3000))
    rec.check(10.0)
    assert replays(target) == [("telemetry", 501, 1000, "requested", 1), ("telemetry", 501, 1000, "recovered", 1)]
    rec.check(100.0)
    assert len(asked.requests) == 1


def test_part_of_a_range_arriving_asks_for_the_rest(target) -> None:
    asked = Asked()
    rec = Recovery(target, "mes-sink-1", asked, after=5)
    rec.saw(AGENT, f"{ROOT}/_line/events")
    held(target, "events", (1, 10), (30_001, 30_005))
    rec.check(0.0)
    rec.check(5.0)
    held(target, "events", (1, 10_010), (30_001, 30_005))  # the agent serves 10,000 a request
    rec.check(8.0)
    rec.check(13.0)
    assert asked.spans() == [("events", 11, 30_000), ("events", 10_011, 30_000)]
    held(target, "events", (1, 30_005))
    rec.check(14.0)
    assert replays(target)[-1] == ("events", 11, 30_000, "recovered", 2)  # the range first asked for


def test_holes_covered_by_gap_events_are_not_asked_for(target) -> None:
    asked = Asked()
    rec = Recovery(target, "mes-sink-1", asked, after=5)
    rec.saw(AGENT, f"{ROOT}/sealer-1/telemetry")
    held(target, "telemetry", (1, 100), (201, 300), (401, 500))
    event(target, 1, "gap", stream="telemetry", seq_first=101, seq_last=200, reason="buffer full")
    rec.check(0.0)
    rec.check(6.0)
    assert asked.spans() == [("telemetry", 301, 400)]


def test_what_the_agent_no_longer_holds_is_unrecovered_at_once(target) -> None:
    asked = Asked()
    rec = Recovery(target, "mes-sink-1", asked, after=5)
    rec.saw(AGENT, f"{ROOT}/sealer-1/units")
    held(target, "units", (41, 50))  # a sink started late: 1..40 were purged by retention long ago
    rec.check(0.0)
    rec.check(5.0)
    assert asked.spans() == [("units", 1, 40)]
    event(target, 7, "replay_unavailable", stream="units", seq_first=1, seq_last=40, requested_by="mes-sink-1",
          reason="not in the buffer: purged after delivery (buffer.retention)")
    rec.check(6.0)
    assert replays(target)[-1] == ("units", 1, 40, "unrecovered", 0)
    with target.transaction():  # audit reads the unit rows themselves (their chains do not matter here)
        target.execute("INSERT INTO units (agent, seq, id, recorded_at, body, prev_hash, hash, received_at) "
                       "VALUES (?, 41, 'u41', 0, '{}', '', '', ?)", (AGENT, datetime.now(UTC)))
    units = next(sa for sa in audit(target) if sa.stream == "units")
    assert not units.ok and units.missing == [[1, 40]]
    assert units.unrecovered == [{"seq_first": 1, "seq_last": 40, "detail": "the agent no longer holds it: "
                                  "not in the buffer: purged after delivery (buffer.retention)"}]
    assert "asked the agent for seq 1..40, not recovered: the agent no longer holds it" in render(
        audit(target), target.where)
    rec.check(1000.0)
    assert len(asked.requests) == 1
    # a restarted sink remembers it: not asked for again
    again = Asked()
    rec2 = Recovery(target, "mes-sink-1", again, after=5)
    rec2.saw(AGENT, f"{ROOT}/sealer-1/units")
    rec2.check(2000.0)
    rec2.check(2010.0)
    assert again.requests == []


def test_no_request_without_a_connection_or_a_known_topic_root(target) -> None:
    asked = Asked()
    rec = Recovery(target, "mes-sink-1", asked, after=5)
    held(target, "units", (1, 4), (6, 9))
    rec.check(0.0)
    rec.check(10.0)
    assert asked.requests == [] and replays(target) == []  # no message of the agent seen: root unknown
    rec.saw(AGENT, f"{ROOT}/_agent/{AGENT}/status")
    asked.connected = False
    rec.check(20.0)
    assert asked.requests == [] and replays(target) == []  # not sent: not counted as an attempt
    asked.connected = True
    rec.check(25.0)
    assert asked.spans() == [("units", 5, 5)] and replays(target) == [("units", 5, 5, "requested", 1)]


def test_the_sink_skips_replay_requests_on_its_filter() -> None:
    p = parse_payload(orjson.dumps({"schema": REQUEST_SCHEMA, "stream": "units", "from_seq": 5, "to_seq": 7,
                                    "requested_by": "mes-sink-1"}))
    assert p.kind == "control"
