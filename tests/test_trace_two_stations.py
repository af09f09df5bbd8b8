"""`linetap trace SERIAL` through two stations, against the simulator's ground truth, every part real:
the Modbus simulator serving the sealer (unit id 1, with its pouch-film lot) and the leak tester
after it (unit id 2), the agent running the shipped two-station example, a broker, `linetap sink`
(the installed command) into DuckDB, then `linetap trace` (json, text, html)."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest
from agent_helpers import line_config, payloads, running_agent
from sink_helpers import SinkProc, linetap, query
from test_e2e_units import validate_records
from test_sink_e2e import sink_db  # noqa: F401 (the DuckDB and PostgreSQL targets)

from linetap.agent.sink.trace import render_text
from linetap.agent.sink.trace_html import render_html
from linetap.config.loader import load_config
from linetap.simulators import LeakTesterModel, ModbusStationServer, StationModel

EXAMPLE = Path(__file__).parents[1] / "config/examples/sealer-and-leak-tester-modbus.yaml"
SPEED = 4.0  # model seconds per real second
TESTS = 7  # leak-tested units to wait for


def two_station_line(tmp_path, broker, port: int):
    example = load_config(EXAMPLE)
    devices = [{**d.model_dump(mode="json", exclude_none=True), "port": port, "poll_interval": "20ms",
                "timeout": "500ms"} for d in example.devices]
    stations = [s.model_dump(mode="json", exclude_none=True) for s in example.stations]
    return line_config(tmp_path, broker, devices, stations=stations)


def whole(records: list[dict], station: str) -> dict[str, dict]:
    """The station's records of units it saw whole, by serial."""
    return {r["serial"]: r for r in records if r["station"] == station and not r.get("started_before_agent")}


@pytest.mark.timeout(180)
async def test_trace_of_a_serial_through_both_stations_matches_the_ground_truth(tmp_path, broker, capture,
                                                                               sink_db):  # noqa: F811
    sealer = StationModel(seed=17, out_of_limit_share=0.25, units_per_lot=3, keep_units=1000)
    tester = LeakTesterModel(sealer, seed=17, out_of_limit_share=0.3, keep_units=1000)
    db = sink_db  # a DuckDB file, and a database of a private PostgreSQL
    sink = SinkProc(broker, db, tmp_path / "sink.log")  # subscribed before the agent publishes
    try:
        async with ModbusStationServer(sealer, port=0, speed=SPEED, leak_tester=tester) as sim:
            cfg = two_station_line(tmp_path, broker, sim.port)
            async with running_agent(cfg):
                await capture.until(lambda m: len(whole([p["body"] for p in payloads(m, "/units")],
                                                        "leaktester1")) >= TESTS, timeout=90)
        await asyncio.sleep(2)  # the sink commits what the broker delivered
    finally:
        await asyncio.to_thread(sink.stop)

    validate_records(capture.messages)  # components included, against the unit and event schemas
    published = [p for p in payloads(capture.messages, "/units")]
    held = {rid for (rid,) in query(db, "SELECT id FROM units")}
    assert {p["id"] for p in published} <= held, "the sink holds every unit record the agent published"
    records = [p["body"] for p in published]
    sealed, tested = whole(records, "sealer1"), whole(records, "leaktester1")
    serials = [s for s in tested if s in sealed]
    assert len(serials) >= TESTS - 1, (list(sealed), list(tested))
    leak_verdicts = set()
    for serial in serials:
        r = linetap("trace", serial, "--db", db, "--format", "json")
        assert r.returncode == 0, r.stderr
        tr = json.loads(r.stdout)
        seal, leak = tr["units"]  # two steps, in the order the unit went through them
        assert (seal["station"], leak["station"]) == ("sealer1", "leaktester1"), tr["units"]
        assert all(u["chain"]["verified"] for u in tr["units"])
        assert seal["ended_at"] < leak["started_at"]
        s_truth, l_truth = sealer.unit(serial), tester.unit(serial)
        # the sealer: operator, the film lot it was sealed from, its parameters and verdict
        assert seal["operator"] == s_truth.operator
        assert seal["components"] == {"pouch_film": s_truth.film_lot} == seal["body"]["components"]
        p = {x["name"]: x for x in seal["parameters"]}
        assert math.isclose(p["seal_pressure"]["value"], s_truth.pressure, rel_tol=1e-6)
        assert math.isclose(p["dwell_time"]["value"], s_truth.dwell, rel_tol=1e-6)
        assert seal["verdict"] == ("pass" if all(s_truth.within_limits().values()) else "fail"), (seal, s_truth)
        # the leak tester: its operator, its results and verdict; the time between the steps
        assert leak["operator"] == l_truth.operator and leak["components"] == {}
        p = {x["name"]: x for x in leak["parameters"]}
        assert math.isclose(p["test_pressure"]["value"], l_truth.test_pressure, rel_tol=1e-6)
        assert math.isclose(p["pressure_decay"]["value"], l_truth.pressure_decay, rel_tol=1e-6)
        assert p["tester_result"]["value"] == (1 if l_truth.passed else 2)
        assert leak["verdict"] == ("pass" if l_truth.passed else "fail"), (leak, l_truth)
        leak_verdicts.add(leak["verdict"])
        transfer = (leak["started_at"] - seal["ended_at"]) / 1e6 * SPEED
        assert math.isclose(transfer, l_truth.started_at - s_truth.ended_at, abs_tol=0.05 * SPEED + 0.05)
        ncs = [e["body"]["parameter"] for e in tr["events"] if e["kind"] == "nonconformance"
               and e["body"]["station"] == "leaktester1"]
        assert bool(ncs) == (not l_truth.passed)
        # the same history as text and as a page
        text = render_text(tr)
        assert f"pouch_film {s_truth.film_lot}" in text and text.index("sealer1") < text.index("leaktester1")
        html = render_html(tr, db)
        assert f"<th>component pouch_film</th><td>{s_truth.film_lot}</td>" in html
        assert html.index("Step 1: sealer1") < html.index("Step 2: leaktester1")
    assert leak_verdicts == {"pass", "fail"}, "seed 17 gives passed and failed leak tests among the first ones"
    lots = {sealer.unit(s).film_lot for s in serials}
    assert len(lots) >= 2, "units from more than one film roll"
    r = linetap("trace", serials[0], "--db", db)
    assert r.returncode == 0 and f"pouch_film {sealer.unit(serials[0]).film_lot}" in r.stdout, r.stdout
