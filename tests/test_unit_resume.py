"""Units not seen whole: `unit_started`, resume after a restart, started before the agent (pure logic),
and the buffer's table of open units."""

from __future__ import annotations

import pytest
from test_capture import STATION, poll, run, station

from linetap.agent.capture import CaptureEngine
from linetap.agent.unit_resume import OpenUnit, undecidable
from linetap.buffers import DuckDBBuffer
from linetap.buffers.records import Event
from linetap.config.capture import Parameter
from linetap.config.models import LineConfig
from linetap.drivers.samples import Quality, SampleBatch


def started_body(st, polls) -> dict:
    """The `unit_started` event body a (previous) agent committed for the unit these polls start."""
    _, events = run(st, polls, started=True)
    [ev] = [e for e in events if e.kind == "unit_started"]
    return ev.body()


def resumed(polls_before, stopped_at_s: float, **overrides):
    """A station of a restarted agent, with the unit the previous agent started (polls_before) pending."""
    body = started_body(station(**overrides), polls_before)
    st = station(**overrides)
    st.pending = OpenUnit.from_event(body, int(stopped_at_s * 1e6))
    return st


def params(unit: dict) -> dict:
    return {p["name"]: p for p in unit["parameters"]}


def test_unit_started_is_an_event_with_the_units_identity():
    st = station()
    _, events = run(st, [poll(0, False, serial="SN-0"), poll(1, True, serial="SN-9", operator="OP-7")], started=True)
    [ev] = events
    assert ev.kind == "unit_started" and ev.station == "sealer1" and ev.device == "plc1" and ev.ts == 1_000_000
    assert ev.data == {"serial": "SN-9", "lot": None, "operator": "OP-7", "started_at": 1_000_000,
                       "triggers": {"cycle_active": True}, "config_version": "sha256:test"}


def test_same_unit_still_in_progress_is_resumed_and_says_what_it_missed():
    st = resumed([poll(0, False), poll(1, True, temp=170.0)], stopped_at_s=1.2)
    units, events = run(st, [poll(2.0, True, temp=181.0), poll(2.5, True, temp=182.0),
                             poll(3.0, False, dwell=1.3, temp=160.0)], started=True)
    assert not [e for e in events if e.kind == "unit_started"], "the same unit: not started again"
    [u] = units
    assert u["serial"] == "SN-1" and u["started_at"] == 1_000_000 and u["ended_at"] == 3_000_000
    assert u["interrupted"] == {"from": 1_200_000, "to": 2_000_000}
    assert u["cycle_time"] == 2.0  # start (from its unit_started event) and end are both known
    p = params(u)
    assert p["temp_max"]["value"] == 182.0 and p["temp_max"]["verdict"] == "incomplete"  # seen part only
    assert p["temp_mean"]["verdict"] == "incomplete" and p["temp_trace"]["verdict"] == "incomplete"
    assert p["active_time"]["verdict"] == "incomplete"
    assert p["dwell"]["verdict"] == "pass" and p["pressure"]["verdict"] == "pass"  # end, last: seen
    assert p["cycle"]["verdict"] == "recorded" and p["cycle"]["value"] == 2.0
    assert u["verdict"] == "incomplete"
    assert u["reasons"][0] == "agent restarted mid-cycle: no data from 1200000 to 2000000"
    assert [e.kind for e in events] == ["unit_incomplete"]


def test_a_breach_seen_after_the_restart_is_decisive():
    st = resumed([poll(0, False), poll(1, True)], stopped_at_s=1.1)
    units, events = run(st, [poll(2, True, temp=190.0), poll(3, False)])
    [u] = units
    assert params(u)["temp_max"]["verdict"] == "fail" and u["verdict"] == "fail"
    assert [e.data["parameter"] for e in events if e.kind == "nonconformance"] == ["temp_max"]


def test_a_resumed_unit_whose_parameters_are_all_decidable_passes():
    only_decidable = [{"name": "dwell", "tag": "dwell", "reduce": "end", "limits": {"low": 1.0, "high": 1.6}},
                      {"name": "pressure", "tag": "pressure", "reduce": "last", "limits": {"low": 4, "high": 6}},
                      {"name": "cycle", "reduce": "cycle_time", "limits": {"high": 5}}]
    st = resumed([poll(0, False), poll(1, True)], stopped_at_s=1.5, parameters=only_decidable)
    units, events = run(st, [poll(2, True), poll(3, False)])
    [u] = units
    assert u["verdict"] == "pass" and u["reasons"] == [] and u["interrupted"] == {"from": 1_500_000, "to": 2_000_000}
    assert events == []


def test_unit_no_longer_in_progress_is_closed_incomplete_agent_restarted():
    st = resumed([poll(0, False), poll(1, True)], stopped_at_s=1.3)
    units, events = run(st, [poll(4, False), poll(5, False)], started=True)
    [u] = units
    assert u["serial"] == "SN-1" and u["verdict"] == "incomplete" and u["reasons"] == ["agent restarted"]
    assert u["ended_at"] is None and u["cycle_time"] is None
    assert u["interrupted"] == {"from": 1_300_000, "to": 4_000_000}
    assert all(p["verdict"] == "incomplete" and p["value"] is None for p in u["parameters"])
    [e] = events
    assert e.kind == "unit_incomplete" and e.data["reason"] == "agent restarted" and e.data["serial"] == "SN-1"


def test_another_unit_in_progress_closes_the_old_one_and_records_the_new_one_from_the_first_poll():
    st = resumed([poll(0, False), poll(1, True)], stopped_at_s=1.3)
    units, events = run(st, [poll(4, True, serial="SN-2", temp=190.0), poll(5, False, serial="SN-2")], started=True)
    old, new = units
    assert old["serial"] == "SN-1" and old["reasons"] == ["agent restarted"]
    assert new["serial"] == "SN-2" and new["started_before_agent"] is True and "interrupted" not in new
    assert new["verdict"] == "fail"  # its max above the high limit, whatever came before
    started = [e for e in events if e.kind == "unit_started"]
    assert [(e.data["serial"], e.data["started_before_agent"]) for e in started] == [("SN-2", True)]


def test_unit_already_running_at_the_first_poll_is_captured_and_marked():
    st = station(parameters=[*STATION["parameters"],
                             {"name": "p_start", "tag": "pressure", "reduce": "start", "limits": {"low": 4}}])
    units, events = run(st, [poll(10, True, serial="SN-5"), poll(10.5, True, serial="SN-5"),
                             poll(11, False, serial="SN-5")], started=True)
    [u] = units
    assert u["serial"] == "SN-5" and u["started_before_agent"] is True and u["started_at"] == 10_000_000
    assert u["cycle_time"] is None
    p = params(u)
    assert p["p_start"]["verdict"] == "incomplete" and "start of the cycle was not seen" in p["p_start"]["reason"]
    assert p["cycle"]["verdict"] == "incomplete" and p["cycle"]["value"] is None
    assert p["dwell"]["verdict"] == "pass"
    assert u["verdict"] == "incomplete" and u["reasons"][0] == "unit started before the agent: its start was not seen"
    assert events[0].kind == "unit_started" and events[0].data["started_before_agent"] is True


def test_idle_first_poll_opens_nothing_and_a_device_loss_is_not_a_first_poll():
    st = station()
    assert run(st, [poll(0, False), poll(0.5, False)], started=True) == ([], [])
    st = station()
    run(st, [poll(0, False), poll(1, True), poll(1.5, True, bad="connection lost")])
    units, _ = run(st, [poll(3, True), poll(4, False)])
    assert units == []  # the unit already has its incomplete record


def test_device_unreachable_at_restart_closes_the_open_unit_once():
    st = resumed([poll(0, False), poll(1, True)], stopped_at_s=1.3)
    units, events = run(st, [poll(3, False, bad="connection refused")])
    [u] = units
    assert u["reasons"] == ["agent restarted"] and u["serial"] == "SN-1"
    units, _ = run(st, [poll(4, True), poll(5, False)])
    assert units == [], "the same serial back mid-cycle is not recorded a second time"


def test_a_batch_without_the_start_tag_does_not_resolve_the_open_unit():
    st = resumed([poll(0, False), poll(1, True)], stopped_at_s=1.1)
    only_temp = SampleBatch("plc1", ["temperature"], [181.0], [Quality.GOOD], [None], 2_000_000)
    assert st.feed(only_temp) == ([], []) and st.pending is not None  # e.g. an OPC UA change notification
    units, _ = run(st, [poll(2.5, True), poll(3, False)])
    assert units[0]["interrupted"] == {"from": 1_100_000, "to": 2_500_000}


@pytest.mark.parametrize(("at", "seen_from_s", "decided"), [("1.5s", 2.0, True), ("0.5s", 2.0, False)])
def test_at_is_decidable_only_if_its_moment_was_seen(at, seen_from_s, decided):
    overrides = {"parameters": [{"name": "p_at", "tag": "pressure", "reduce": "at", "at": at,
                                 "limits": {"low": 4, "high": 6}}]}
    st = resumed([poll(0, False), poll(1, True)], stopped_at_s=1.1, **overrides)
    units, _ = run(st, [poll(seen_from_s, True), poll(2.6, True, pressure=5.5), poll(3, False)])
    p = params(units[0])["p_at"]
    if decided:
        assert p["verdict"] == "pass" and p["value"] == 5.5 and units[0]["verdict"] == "pass"
    else:
        assert p["verdict"] == "incomplete" and p["value"] is None


def test_undecidable_rule_table():
    def spec(reduce, **kw):
        return Parameter(name="p", tag=None if reduce == "cycle_time" else "t", reduce=reduce, **kw)

    seen = {"start_known": True, "started_at": 0, "seen_from": 1_000_000}
    before = {**seen, "start_known": False}
    for r in ("end", "last", "cycle_time"):
        assert undecidable(spec(r), 1.0, False, **seen) is None
    assert undecidable(spec("cycle_time"), None, False, **before)
    for r in ("max", "min", "trace"):
        assert undecidable(spec(r), 1.0, False, **seen), r
        assert undecidable(spec(r), 1.0, True, **seen) is None, r
    assert undecidable(spec("mean"), 1.0, False, **seen)
    assert undecidable(spec("start"), 1.0, False, **seen)
    limited = spec("true_duration", limits={"high": 2.0})
    assert undecidable(limited, 3.0, False, **seen) is None  # a duration only grows
    assert undecidable(limited, 1.0, False, **seen)


def engine() -> CaptureEngine:
    tags = ["cycle_active", "serial", "operator", "temperature", "pressure", "dwell", "count"]
    return CaptureEngine(LineConfig.model_validate({
        "agent": {"id": "a", "enterprise": "e", "site": "s", "area": "a", "line": "l"},
        "devices": [{"protocol": "modbus", "name": "plc1", "host": "h", "addressing": "zero_based",
                     "tags": [{"name": t, "address": i * 4, "type": "float32"} for i, t in enumerate(tags)]}],
        "stations": [STATION],
    }))


def test_engine_restore_keeps_each_stations_latest_and_closes_the_rest_now():
    older = started_body(station(), [poll(0, False, serial="SN-1"), poll(1, True, serial="SN-1")])
    latest = started_body(station(), [poll(5, False, serial="SN-2"), poll(6, True, serial="SN-2")])
    gone = {**latest, "station": "retired", "device": "plc9", "serial": "SN-X"}
    eng = engine()
    units, events = eng.restore([older, gone, latest], {"plc1": 6_500_000}, now=9_000_000)
    assert [(u["serial"], u["station"], u["verdict"]) for u in units] == [("SN-1", "sealer1", "incomplete"),
                                                                          ("SN-X", "retired", "incomplete")]
    assert {e.kind for e in events} == {"unit_incomplete"}
    units, _ = eng.feed(poll(9, True, serial="SN-2"))
    units, _ = eng.feed(poll(10, False, serial="SN-2"))
    [u] = units
    assert u["serial"] == "SN-2" and u["interrupted"] == {"from": 6_500_000, "to": 9_000_000}


def test_buffer_keeps_open_units_until_their_record_and_across_a_reopen(tmp_path):
    body = started_body(station(), [poll(0, False), poll(1, True)])
    ev = Event("unit_started", body["ts"], body["device"], body["station"],
               {k: v for k, v in body.items() if k not in ("kind", "ts", "device", "station")})
    path = tmp_path / "b.duckdb"
    buf = DuckDBBuffer(path, "a")
    buf.append(events=[ev])
    buf.append(events=[Event("unit_started", 5, "plc1", "other", {"serial": "Z", "started_at": 5})])
    buf.append(units=[{"kind": "unit", "station": "other", "started_at": 5, "serial": "Z"}])
    buf.close()
    buf = DuckDBBuffer(path, "a")
    assert buf.open_units() == [body]
    buf.append(events=[ev], units=[{"kind": "unit", "station": "sealer1", "started_at": 1_000_000}])
    assert buf.open_units() == []  # started and recorded in one transaction: never open
    buf.close()


def test_unit_started_envelope_fits_the_event_schema_and_verifies(tmp_path):
    import json
    from pathlib import Path

    from jsonschema import Draft202012Validator, ValidationError

    import linetap.config
    from linetap.agent.encoders.json_envelope import encode_record
    from linetap.buffers.verify import verify

    schema = json.loads((Path(linetap.config.__file__).parent / "schemas" / "event.json").read_text())
    validator = Draft202012Validator(schema)
    body = started_body(station(), [poll(0, False), poll(1, True)])
    ev = Event("unit_started", body["ts"], body["device"], body["station"],
               {k: v for k, v in body.items() if k not in ("kind", "ts", "device", "station")})
    buf = DuckDBBuffer(tmp_path / "b.duckdb", "a")
    stored, _ = buf.append_records([ev, Event("device_state", 2, "plc1", None, {"state": "connected"})])
    buf.close()
    lines = [encode_record("a", rec, 9) for rec in stored]
    for line in lines:
        validator.validate(json.loads(line))
    broken = json.loads(lines[0])
    del broken["body"]["started_at"]
    with pytest.raises(ValidationError, match="started_at"):
        validator.validate(broken)
    capture = tmp_path / "events.jsonl"
    capture.write_bytes(b"\n".join(lines) + b"\n")
    report = verify([capture])
    assert report.ok and report.counts["a/events"]["unique"] == 2
