"""Payload envelopes and topics: content, JSON Schemas, deterministic message boundaries."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pyarrow as pa
import pytest
from jsonschema import Draft202012Validator, ValidationError

import linetap.config
from linetap.agent.encoders import json_envelope as P
from linetap.agent.topics import Topics, data_topic
from linetap.buffers.records import StoredRecord
from linetap.drivers.samples import Quality, SampleBatch

SCHEMAS = Path(linetap.config.__file__).parent / "schemas"
V = {n: Draft202012Validator(json.loads((SCHEMAS / f"{n}.json").read_text()))
     for n in ("telemetry", "unit", "event", "status")}
TOPICS = Topics("acme/p1/a1/l1/", "ag-1", {"press1": "sealer1"})


def rows(devices: list[str], first_seq: int = 1, polls: list[int] | None = None) -> pa.Table:
    """One sample per entry of `devices`, with seqs from first_seq; `polls[i]` is row i's
    agent_ts (default: all rows of one poll)."""
    n = len(devices)
    polls = polls or [1_000] * n
    t = pa.concat_tables([
        SampleBatch(d, [f"t{seq}"], [float(seq)], [Quality.GOOD], [None], polls[seq - first_seq]).to_arrow()
        for seq, d in enumerate(devices, start=first_seq)
    ])
    return t.add_column(0, "seq", pa.array(range(first_seq, first_seq + n), pa.int64()))


def test_schemas_are_valid_draft_2020_12():
    for name in ("telemetry", "unit", "event", "status"):
        Draft202012Validator.check_schema(json.loads((SCHEMAS / f"{name}.json").read_text()))


def test_telemetry_columns_values_and_quality():
    batch = SampleBatch("press1", ["f", "b", "s", "big", "none", "raw"], [1.25, False, "x", -(2**60), None, b"\x01\xff"],
                        [Quality.GOOD, Quality.GOOD, Quality.GOOD, Quality.UNCERTAIN, Quality.BAD, Quality.GOOD],
                        [None, None, None, "stale", "timeout", None], 42, [1, 2, 3, None, None, 6]).to_arrow()
    table = batch.add_column(0, "seq", pa.array(range(11, 17), pa.int64()))
    [(topic, first, last, payload)] = list(P.iter_telemetry_messages("ag-1", table, 500, TOPICS, 99))
    d = orjson.loads(payload)
    V["telemetry"].validate(d)
    assert topic == "acme/p1/a1/l1/sealer1/telemetry" and (first, last) == (11, 16)
    assert {k: d[k] for k in ("schema", "id", "agent", "stream", "seq", "seq_last", "count", "sent_at", "device",
                              "station")} == {
        "schema": "linetap.telemetry/2", "id": "ag-1/telemetry/11-16", "agent": "ag-1", "stream": "telemetry",
        "seq": 11, "seq_last": 16, "count": 6, "sent_at": 99, "device": "press1", "station": "sealer1"}
    assert d["samples"] == {
        "tag": ["f", "b", "s", "big", "none", "raw"],
        "value": [1.25, False, "x", str(-(2**60)), None, "01ff"],
        "quality": ["good", "good", "good", "uncertain", "bad", "good"],
        "reason": [None, None, None, "stale", "timeout", None],
        "source_ts": [1, 2, 3, None, None, 6],
        "agent_ts": [42] * 6,
    }


def test_messages_split_by_device_gap_and_batch():
    devices = ["a"] * 7 + ["b"] * 3 + ["a"] * 2
    table = rows(devices)
    spans = [(f, last) for _, f, last, _ in P.iter_telemetry_messages("ag", table, 4, TOPICS, 0)]
    # buckets of 4 aligned at seq 1, 5, 9, ...; device changes at 8 and 11
    assert spans == [(1, 4), (5, 7), (8, 8), (9, 10), (11, 12)]
    # a hole in seq (e.g. rows dropped at the size cap) also ends a message
    holey = pa.concat_tables([rows(["a"] * 3, 1), rows(["a"] * 3, 10)])
    assert [(f, last) for _, f, last, _ in P.iter_telemetry_messages("ag", holey, 100, TOPICS, 0)] == [(1, 3), (10, 12)]


def test_a_new_poll_starts_a_new_message():
    """A new agent_ts (the next poll's SampleBatch) ends a message: where the forwarder cut at the
    live head (the end of an append) is a boundary the rows show, so a replay rebuilds that cut."""
    devices = ["a"] * 10
    polls = [1_000] * 3 + [2_000] * 4 + [3_000] * 3
    spans = [(f, last) for _, f, last, _ in P.iter_telemetry_messages("ag", rows(devices, polls=polls), 4, TOPICS, 0)]
    assert spans == [(1, 3), (4, 4), (5, 7), (8, 8), (9, 10)]  # polls at 4 and 8, buckets at 5 and 9
    # the forwarder caught up after the first and the second poll: the same messages, read in three pieces
    pieces = [rows(devices[a:b], first_seq=a + 1, polls=polls[a:b]) for a, b in ((0, 3), (3, 7), (7, 10))]
    assert [(f, last) for t in pieces for _, f, last, _ in P.iter_telemetry_messages("ag", t, 4, TOPICS, 0)] == spans


@pytest.mark.parametrize("restart_at", [0, 4, 8, 9, 12, 16])
def test_boundaries_do_not_depend_on_where_the_read_starts(restart_at):
    """After a reconnect the forwarder reads again from the cursor (always a message boundary):
    the messages it builds are the ones it built before, same ids, same bytes apart from sent_at."""
    devices = ["a"] * 9 + ["b"] * 6 + ["a"] * 10
    full = {f: p for _, f, _, p in P.iter_telemetry_messages("ag", rows(devices), 4, TOPICS, 5)}
    assert restart_at == 0 or restart_at + 1 in full  # the restart points are message boundaries
    again = rows(devices[restart_at:], first_seq=restart_at + 1)
    for _, f, _, p in P.iter_telemetry_messages("ag", again, 4, TOPICS, 5):
        assert p == full[f]


def test_unit_and_event_envelopes():
    body = {"kind": "unit", "serial": "SN-000001", "lot": None, "station": "sealer1", "device": "press1",
            "operator": "OP-1107", "started_at": 1_000, "ended_at": 2_051_000, "cycle_time": 2.05, "verdict": "pass",
            "parameters": [{"name": "seal_pressure", "reduce": "max", "tag": "seal_pressure", "value": 5.1,
                            "unit": "bar", "low": 4.0, "high": 6.0, "spec": "WI-SEAL-007 rev B", "verdict": "pass",
                            "reason": None}],
            "reasons": [], "config_version": "sha256:" + "0f" * 32}
    rec = StoredRecord("units", 7, "ag-1/units/7", 1_000, body, "aa" * 32, "bb" * 32)
    d = orjson.loads(P.encode_record("ag-1", rec, 2_000))
    V["unit"].validate(d)
    assert d == {"schema": "linetap.unit/2", "id": "ag-1/units/7", "agent": "ag-1", "stream": "units", "seq": 7,
                 "sent_at": 2_000, "recorded_at": 1_000, "prev_hash": "aa" * 32, "hash": "bb" * 32, "body": body}
    assert TOPICS.record(rec) == "acme/p1/a1/l1/sealer1/units"
    ev = StoredRecord("events", 3, "ag-1/events/3", 1_000,
                      {"kind": "device_state", "ts": 5, "device": "press1", "station": None, "state": "lost"}, "", "cc")
    d = orjson.loads(P.encode_record("ag-1", ev, 2_000))
    V["event"].validate(d)
    assert d["schema"] == "linetap.event/2" and TOPICS.record(ev) == "acme/p1/a1/l1/_line/events"
    # only sent_at changes between two sends of the same record
    a, b = (orjson.loads(P.encode_record("ag-1", ev, t)) for t in (1, 2))
    assert {**a, "sent_at": 0} == {**b, "sent_at": 0}


def test_status_and_schema_rejects_garbage():
    d = orjson.loads(P.encode_status("ag-1", "online", 5))
    V["status"].validate(d)
    assert d == {"schema": "linetap.status/1", "agent": "ag-1", "state": "online", "ts": 5}
    assert TOPICS.status == "acme/p1/a1/l1/_agent/ag-1/status"
    with pytest.raises(ValueError):
        P.encode_status("ag-1", "sleeping", 5)
    with pytest.raises(ValidationError):
        V["status"].validate({**d, "state": "sleeping"})
    with pytest.raises(ValidationError):
        V["telemetry"].validate({"schema": "linetap.telemetry/2"})


def test_unknown_device_uses_its_name_as_station():
    assert TOPICS.telemetry("oven9") == "acme/p1/a1/l1/oven9/telemetry"
    assert data_topic("r", "s", "events") == "r/s/events"
