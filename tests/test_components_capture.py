"""`components:` of a station (genealogy): read when the unit starts, written into `unit_started` and
the unit record, kept when a unit is resumed after a restart (pure logic)."""

from __future__ import annotations

from linetap.agent.station_capture import StationAssembler
from linetap.agent.unit_resume import OpenUnit
from linetap.config.capture import StationCapture
from linetap.drivers.samples import Quality, SampleBatch

TAGS = ["cycle_active", "serial", "film_lot", "label_lot"]
STATION = {"name": "sealer1", "device": "plc1", "serial": {"tag": "serial"},
           "start": {"tag": "cycle_active", "on": "rising"},
           "components": {"pouch_film": "film_lot", "label": "label_lot"}}


def poll(t_s: float, active: bool, serial: str, film: str, label: str = "LB-1") -> SampleBatch:
    return SampleBatch("plc1", list(TAGS), [active, serial, film, label], [Quality.GOOD] * 4, [None] * 4,
                       int(t_s * 1e6))


def assembler(**overrides) -> StationAssembler:
    return StationAssembler(StationCapture.model_validate({**STATION, **overrides}), "sha256:test")


def feed(st: StationAssembler, polls: list[SampleBatch]):
    units, events = [], []
    for b in polls:
        u, e = st.feed(b)
        units += u
        events += e
    return units, events


def test_components_are_the_values_at_the_unit_start():
    st = assembler()
    units, events = feed(st, [
        poll(0.0, False, "SN-1", "PF-2611-0041"),
        poll(1.0, True, "SN-2", "PF-2611-0042", "LB-7"),
        poll(1.5, True, "SN-2", "PF-2611-0043", "LB-8"),  # the next roll is scanned mid-cycle
        poll(2.0, False, "SN-2", "PF-2611-0043"),
        poll(3.0, True, "SN-3", "PF-2611-0043", "LB-9"),
        poll(4.0, False, "SN-3", "PF-2611-0043"),
    ])
    assert [u["components"] for u in units] == [{"pouch_film": "PF-2611-0042", "label": "LB-7"},
                                                {"pouch_film": "PF-2611-0043", "label": "LB-9"}]
    started = [e.data for e in events if e.kind == "unit_started"]
    assert [s["components"] for s in started] == [u["components"] for u in units]


def test_a_station_without_components_writes_no_components_key():
    st = assembler(components={})
    units, _ = feed(st, [poll(0.0, False, "SN-1", "PF-1"), poll(1.0, True, "SN-2", "PF-1"),
                         poll(2.0, False, "SN-2", "PF-1")])
    [u] = units
    assert "components" not in u


def test_a_resumed_unit_keeps_the_components_read_at_its_start():
    first = assembler()
    _, events = feed(first, [poll(0.0, False, "SN-1", "PF-A"), poll(1.0, True, "SN-2", "PF-A", "LB-3")])
    [body] = [e.body() for e in events if e.kind == "unit_started"]
    st = assembler()  # the restarted agent; the film lot changed meanwhile
    st.pending = OpenUnit.from_event(body, int(1.2e6))
    units, _ = feed(st, [poll(1.5, True, "SN-2", "PF-B", "LB-4"), poll(2.0, False, "SN-2", "PF-B", "LB-4")])
    [u] = units
    assert u["serial"] == "SN-2" and u["interrupted"] and u["components"] == {"pouch_film": "PF-A", "label": "LB-3"}
