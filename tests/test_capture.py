"""Unit assembly and non-conformance logic, fed with hand-made sample batches (pure logic)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from linetap.agent.capture import CaptureEngine
from linetap.agent.station_capture import StationAssembler
from linetap.config.capture import StationCapture
from linetap.config.models import LineConfig
from linetap.drivers.samples import Quality, SampleBatch

TAGS = ["cycle_active", "serial", "operator", "temperature", "pressure", "dwell", "count"]

STATION = {
    "name": "sealer1",
    "device": "plc1",
    "serial": {"tag": "serial"},
    "operator": {"tag": "operator"},
    "start": {"tag": "cycle_active", "on": "rising"},
    "timeout": "10s",
    "parameters": [
        {"name": "temp_max", "tag": "temperature", "reduce": "max", "unit": "degC",
         "limits": {"low": 175, "high": 185}, "spec": "SP-12 rev C"},
        {"name": "temp_min", "tag": "temperature", "reduce": "min", "limits": {"low": 175}},
        {"name": "temp_mean", "tag": "temperature", "reduce": "mean", "limits": {"low": 175, "high": 185}},
        {"name": "pressure", "tag": "pressure", "reduce": "last", "limits": {"low": 4, "high": 6}},
        {"name": "dwell", "tag": "dwell", "reduce": "end", "limits": {"low": 1.0, "high": 1.6}},
        {"name": "active_time", "tag": "cycle_active", "reduce": "true_duration"},
        {"name": "cycle", "reduce": "cycle_time"},
        {"name": "temp_trace", "tag": "temperature", "reduce": "trace", "points": 3},
    ],
}


def poll(t_s: float, active: bool, serial="SN-1", operator="OP-1", temp=180.0, pressure=5.0, dwell=1.3,
         bad: str | None = None) -> SampleBatch:
    values = [active, serial, operator, temp, pressure, dwell, 0]
    n = len(TAGS)
    return SampleBatch("plc1", list(TAGS), values if bad is None else [None] * n,
                       [Quality.GOOD if bad is None else Quality.BAD] * n, [bad] * n, int(t_s * 1e6))


def station(**overrides) -> StationAssembler:
    return StationAssembler(StationCapture.model_validate({**STATION, **overrides}), "sha256:test")


def run(st: StationAssembler, polls: list[SampleBatch], *, started: bool = False):
    """Feed the polls; the unit records and events (`unit_started` events only if `started`)."""
    units, events = [], []
    for b in polls:
        u, e = st.feed(b)
        units.extend(u)
        events.extend(x for x in e if started or x.kind != "unit_started")
    return units, events


def test_one_good_unit_has_every_parameter():
    st = station()
    units, events = run(st, [
        poll(0.0, False),
        poll(1.0, True, serial="SN-7", temp=170.0),
        poll(1.5, True, serial="SN-7", temp=179.0),
        poll(2.0, True, serial="SN-7", temp=181.0),
        poll(2.5, False, serial="SN-7", temp=160.0, dwell=1.25),
    ])
    assert events == [] or all(e.kind == "nonconformance" for e in events)
    [u] = units
    assert u["serial"] == "SN-7" and u["operator"] == "OP-1" and u["station"] == "sealer1"
    assert u["started_at"] == 1_000_000 and u["ended_at"] == 2_500_000 and u["cycle_time"] == 1.5
    p = {x["name"]: x for x in u["parameters"]}
    assert p["temp_max"]["value"] == 181.0
    assert p["temp_min"]["value"] == 170.0 and p["temp_min"]["verdict"] == "fail"
    assert p["temp_mean"]["value"] == pytest.approx((170 + 179 + 181) / 3)
    assert p["pressure"]["value"] == 5.0
    assert p["dwell"]["value"] == 1.25  # latched by the PLC at the end of the cycle
    assert p["active_time"]["value"] == pytest.approx(1.5)
    assert p["cycle"]["value"] == 1.5
    assert p["temp_trace"]["value"] == [[0.0, 170.0], [0.5, 179.0], [1.0, 181.0]]
    assert u["verdict"] == "fail" and u["config_version"] == "sha256:test"


def test_breach_raises_nonconformance_during_the_cycle_before_the_record():
    st = station()
    _, early = run(st, [poll(0, False), poll(1, True), poll(1.2, True, temp=190.0)])
    [nc] = early
    assert nc.kind == "nonconformance" and nc.data["parameter"] == "temp_max"
    assert nc.data["value"] == 190.0 and nc.data["limit"] == "high" and nc.data["limit_value"] == 185
    assert nc.data["spec"] == "SP-12 rev C" and nc.data["serial"] == "SN-1" and nc.data["during_cycle"]
    units, later = run(st, [poll(1.4, True, temp=180.0), poll(2, False)])
    [u] = units
    assert u["verdict"] == "fail"
    assert not [e for e in later if e.data.get("parameter") == "temp_max"]  # raised once per unit


def test_end_of_unit_breach_is_reported_when_the_unit_ends():
    st = station()
    units, events = run(st, [poll(0, False), poll(1, True), poll(2, False, dwell=2.0)])
    assert [e.data["parameter"] for e in events] == ["dwell"]
    assert not events[0].data["during_cycle"]
    assert units[0]["verdict"] == "fail"


def test_in_limit_unit_passes():
    st = station()
    units, events = run(st, [poll(0, False), poll(1, True), poll(1.5, True), poll(2, False)])
    assert events == []
    assert units[0]["verdict"] == "pass"
    assert {p["verdict"] for p in units[0]["parameters"]} == {"pass", "recorded"}


def test_device_lost_mid_cycle_gives_incomplete_unit_and_event():
    st = station()
    units, events = run(st, [poll(0, False), poll(1, True), poll(1.5, True, bad="connection lost")])
    [u] = units
    assert u["verdict"] == "incomplete"
    assert "lost mid-cycle" in u["reasons"][0] and "connection lost" in u["reasons"][0]
    [e] = events
    assert e.kind == "unit_incomplete" and e.data["serial"] == "SN-1"
    # after recovery, a cycle still active is not mistaken for a new unit start
    units, _ = run(st, [poll(3, True), poll(4, False)])
    assert units == []


@pytest.mark.parametrize("lost_during", ["a unit", "idle"])
def test_unit_under_way_when_the_device_comes_back_is_recorded(lost_during):
    """Found by the soak: the device came back mid-cycle of a new unit, which got no record at all."""
    st = station()
    first = [poll(0, False), poll(1, True)] if lost_during == "a unit" else [poll(0, False), poll(1, True), poll(2, False)]
    units, events = run(st, [*first, poll(2.5, False, bad="connection refused"),
                             poll(4, True, serial="SN-2"), poll(5, True, serial="SN-2"), poll(6, False, serial="SN-2")],
                        started=True)
    assert [u["serial"] for u in units] == ["SN-1", "SN-2"]
    second = units[1]
    assert second["started_while_device_lost"] is True and "started_before_agent" not in second
    assert second["started_at"] == 4_000_000 and second["cycle_time"] is None
    assert second["verdict"] == "incomplete" and "unreachable" in second["reasons"][0]
    started = [e for e in events if e.kind == "unit_started"]
    assert [e.data["serial"] for e in started] == ["SN-1", "SN-2"] and started[1].data["started_while_device_lost"]


def test_unit_that_never_ends_times_out_as_incomplete():
    st = station(timeout="2s")
    units, events = run(st, [poll(0, False), poll(1, True), poll(2, True), poll(3.5, True)])
    [u] = units
    assert u["verdict"] == "incomplete" and "did not end within 2s" in u["reasons"][0]
    assert events[-1].kind == "unit_incomplete"


def test_serial_change_trigger_ends_one_unit_and_starts_the_next():
    st = station(start={"tag": "serial", "on": "change"}, parameters=[{"name": "c", "reduce": "cycle_time"}])
    units, _ = run(st, [poll(0, True, serial="A"), poll(1, True, serial="B"), poll(3, True, serial="C"),
                        poll(4, True, serial="D")])
    # A is under way at the first poll (a change start: a unit is always in progress): recorded too
    assert [(u["serial"], u["cycle_time"]) for u in units] == [("A", None), ("B", 2.0), ("C", 1.0)]
    assert units[0]["started_before_agent"] and "started_before_agent" not in units[1]


def test_bad_quality_of_one_parameter_makes_it_incomplete_not_pass():
    st = station()
    bad_pressure = poll(1.5, True)
    bad_pressure.quality[4] = Quality.BAD
    bad_pressure.reason[4] = "modbus exception 2 (illegal data address)"
    bad_pressure.value[4] = None
    units, _ = run(st, [poll(0, False), poll(1, True, pressure=None), bad_pressure, poll(2, False)])
    p = {x["name"]: x for x in units[0]["parameters"]}
    assert p["temp_max"]["verdict"] == "pass"
    assert p["pressure"]["verdict"] == "incomplete" and "illegal data address" in p["pressure"]["reason"]
    assert units[0]["verdict"] == "incomplete"


def test_engine_routes_batches_by_device():
    cfg = LineConfig.model_validate({
        "agent": {"id": "a", "enterprise": "e", "site": "s", "area": "a", "line": "l"},
        "devices": [{"protocol": "modbus", "name": "plc1", "host": "h", "addressing": "zero_based",
                     "tags": [{"name": t, "address": i * 4, "type": "float32"} for i, t in enumerate(TAGS)]}],
        "stations": [STATION],
    })
    engine = CaptureEngine(cfg)
    other = SampleBatch("plc2", list(TAGS), [True] * 7, [0] * 7, [None] * 7, 1)
    assert engine.feed(other) == ([], [])
    for b in [poll(0, False), poll(1, True)]:
        engine.feed(b)
    units, _ = engine.feed(poll(2, False))
    assert len(units) == 1 and units[0]["config_version"].startswith("sha256:")


def test_station_referring_to_unknown_device_or_tag_is_a_config_error():
    base = {
        "agent": {"id": "a", "enterprise": "e", "site": "s", "area": "a", "line": "l"},
        "devices": [{"protocol": "modbus", "name": "plc1", "host": "h", "addressing": "zero_based",
                     "tags": [{"name": "cycle_active", "address": 0, "type": "uint16"}]}],
    }
    with pytest.raises(ValidationError, match="no device named 'plc9'"):
        LineConfig.model_validate({**base, "stations": [{**STATION, "device": "plc9"}]})
    with pytest.raises(ValidationError, match="has no tag"):
        LineConfig.model_validate({**base, "stations": [STATION]})


def test_max_below_its_low_limit_is_judged_at_the_end_not_during_the_ramp():
    st = station(parameters=[{"name": "temp_max", "tag": "temperature", "reduce": "max",
                              "limits": {"low": 175, "high": 185}}])
    _, during = run(st, [poll(0, False), poll(1, True, temp=150.0), poll(1.5, True, temp=170.0)])
    assert during == []  # the ramp is below the band by design: not a breach yet
    units, _ = run(st, [poll(1.8, True, temp=180.0), poll(2, False)])
    assert units[0]["verdict"] == "pass"
    st2 = station(parameters=[{"name": "temp_max", "tag": "temperature", "reduce": "max",
                               "limits": {"low": 175, "high": 185}}])
    units, events = run(st2, [poll(0, False), poll(1, True, temp=150.0), poll(2, False)])
    assert units[0]["verdict"] == "fail" and events[0].data["limit"] == "low"
    assert not events[0].data["during_cycle"]


def test_a_cut_short_unit_is_not_failed_on_partial_values():
    st = station(parameters=[{"name": "temp_max", "tag": "temperature", "reduce": "max",
                              "limits": {"low": 175, "high": 185}},
                             {"name": "p_start", "tag": "pressure", "reduce": "start", "limits": {"low": 4}}])
    units, events = run(st, [poll(0, False), poll(1, True, temp=150.0), poll(1.2, True, bad="connection lost")])
    p = {x["name"]: x for x in units[0]["parameters"]}
    assert p["temp_max"]["verdict"] == "incomplete" and "ended early" in p["temp_max"]["reason"]
    assert p["p_start"]["verdict"] == "pass"  # captured in full before the loss
    assert units[0]["verdict"] == "incomplete"
    assert [e.kind for e in events] == ["unit_incomplete"]


def test_a_serial_change_while_the_cycle_stays_on_splits_the_units():
    """Two polls straddling a cycle's end and the next start (an agent stall of 300 ms in the
    soak): the start tag is on in both, only the serial says another unit began. One record of
    two units would give SN-2's values to SN-1 and no record to SN-2."""
    st = station()
    units, events = run(st, [
        poll(0.0, False),
        poll(1.0, True, serial="SN-1", temp=180.0),
        poll(1.5, True, serial="SN-2", temp=182.0),  # SN-1 ended and SN-2 started in between
        poll(2.0, True, serial="SN-2", temp=181.0),
        poll(2.5, False, serial="SN-2"),
    ], started=True)
    first, second = units
    assert first["serial"] == "SN-1" and first["verdict"] == "incomplete"
    assert "serial changed to SN-2" in first["reasons"][0] and first["ended_at"] == 1_500_000
    assert second["serial"] == "SN-2" and second["serial_changed_mid_cycle"] is True
    assert second["verdict"] == "incomplete" and second["cycle_time"] is None
    p = {x["name"]: x for x in second["parameters"]}
    assert p["temp_max"]["value"] == 182.0
    started = [e for e in events if e.kind == "unit_started"]
    assert [e.data["serial"] for e in started] == ["SN-1", "SN-2"]
    assert started[1].data["serial_changed_mid_cycle"] is True


def test_a_serial_change_can_be_part_of_the_cycle():
    st = station(serial={"tag": "serial", "new_serial_ends_unit": False})
    units, _ = run(st, [poll(0.0, False), poll(1.0, True, serial="SN-1"), poll(1.5, True, serial="SN-2"),
                        poll(2.0, False, serial="SN-2")])
    [unit] = units
    assert unit["serial"] == "SN-1" and unit["verdict"] == "pass"
