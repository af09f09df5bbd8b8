"""Per-unit records and non-conformance events through the whole line, against the simulator's truth."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import orjson
import pyarrow as pa
from agent_helpers import AGENT_ID, line_config, payloads, running_agent, telemetry_samples
from fixtures_sim import ModelClock
from jsonschema import Draft202012Validator

from linetap.buffers import DuckDBBuffer
from linetap.buffers.verify import verify
from linetap.config.loader import load_config
from linetap.drivers.samples import Quality, SampleBatch
from linetap.simulators import ModbusStationServer, StationModel
from linetap.simulators.station import State

ROOT = Path(__file__).parents[1]
EXAMPLE = load_config(ROOT / "config/examples/heat-sealer-modbus.yaml")
SCHEMAS = ROOT / "config/schemas"
SPEED = 8.0  # model seconds per real second: a 2.5 s unit takes ~0.3 s


def example_line(tmp_path, broker, port: int, poll: str = "20ms", **sections):
    device = EXAMPLE.devices[0].model_dump(mode="json", exclude_none=True)
    device.update({"port": port, "poll_interval": poll, "timeout": "500ms"})
    station = EXAMPLE.stations[0].model_dump(mode="json", exclude_none=True)
    return line_config(tmp_path, broker, [device], stations=[station], **sections)


def units_of(msgs):
    return [p for p in payloads(msgs, "/units")]


VALIDATORS = {stream: Draft202012Validator(orjson.loads((SCHEMAS / f"{name}.json").read_bytes()))
              for stream, name in (("units", "unit"), ("events", "event"))}


def validate_records(msgs) -> dict[str, int]:
    """Every unit record and event the agent published, against its JSON Schema; how many of each kind."""
    kinds: dict[str, int] = {}
    for stream in ("units", "events"):
        for doc in payloads(msgs, f"/{stream}"):
            VALIDATORS[stream].validate(doc)
            kinds[doc["body"]["kind"]] = kinds.get(doc["body"]["kind"], 0) + 1
    return kinds


def test_the_schemas_describe_the_bodies_field_by_field():
    """A body of another shape than the agent's is refused (the schema is not a bare object)."""
    envelope = {"schema": "linetap.unit/1", "id": "line-1/units/1", "agent": "line-1", "stream": "units", "seq": 1,
                "sent_at": 1, "recorded_at": 1, "prev_hash": "0" * 64, "hash": "ab"}
    other_shape = {"serial": "SN1", "station": "sealer1", "device": "press1", "operator": "op7", "started_at": 1,
                   "ended_at": 2, "cycle_time": 0.5, "verdict": "pass", "config_version": "abc123",
                   "parameters": {"temp": {"value": 180.0, "unit": "degC", "limits": [170, 190], "verdict": "pass"}}}
    assert not VALIDATORS["units"].is_valid({**envelope, "body": other_shape})
    nc = {"kind": "nonconformance", "ts": 1, "device": "sealer1", "station": "sealer1", "serial": "SN1",
          "parameter": "temp", "value": 200.0}
    assert not VALIDATORS["events"].is_valid({**envelope, "schema": "linetap.event/1", "id": "line-1/events/1",
                                              "stream": "events", "body": nc})


async def test_units_match_the_simulators_ground_truth(tmp_path, broker, capture):
    model = StationModel(seed=11, cycle_time=2.0, idle_time=0.5, out_of_limit_share=0.3, keep_units=1000)
    n_units = 16
    async with ModbusStationServer(model, port=0, speed=SPEED) as sim:
        cfg = example_line(tmp_path, broker, sim.port)
        async with running_agent(cfg):
            await capture.until(lambda m: len(units_of(m)) >= n_units, timeout=60)

    records = [u["body"] for u in units_of(capture.messages)]
    kinds = validate_records(capture.messages)  # the real agent output, against the schemas
    assert kinds["unit"] >= n_units and kinds["nonconformance"] and kinds["device_state"], kinds
    serials = [r["serial"] for r in records]
    assert len(serials) == len(set(serials)), "each serial once"
    truth = {t.serial: t for t in model.completed_units}
    # A unit under way when the agent connected is recorded from the first poll seen, marked, and not
    # judged on what was not seen; every other record is a whole unit, compared with what was produced.
    before = [r for r in records if r.get("started_before_agent")]
    assert len(before) <= 1 and all(r["serial"] == records[0]["serial"] for r in before)
    assert all(r["verdict"] in ("incomplete", "fail") and r["cycle_time"] is None for r in before)
    records = [r for r in records if not r.get("started_before_agent")]
    assert len(records) >= n_units - 1
    for rec in records:
        t = truth[rec["serial"]]
        p = {x["name"]: x for x in rec["parameters"]}
        assert rec["operator"] == t.operator
        assert rec["station"] == "sealer1" and rec["device"] == "sealer1"
        # cycle time in real seconds, the model runs SPEED times faster; resolution is one poll
        assert math.isclose(rec["cycle_time"] * SPEED, t.cycle_time, abs_tol=0.05 * SPEED + 0.05), (rec, t)
        assert math.isclose(p["seal_pressure"]["value"], t.pressure, rel_tol=1e-6)
        assert math.isclose(p["dwell_time"]["value"], t.dwell, rel_tol=1e-6)
        assert t.temperature_min - 1e-3 <= p["seal_temperature_max"]["value"] <= t.temperature_max + 1e-3
        expected = "pass" if all(t.within_limits().values()) else "fail"
        assert rec["verdict"] == expected, (rec["serial"], rec["verdict"], t.within_limits(), p)

    # Every failed unit had its non-conformance event, before its unit record.
    order = [(m.topic.rsplit("/", 1)[1], orjson.loads(m.payload)) for m in capture.messages
             if m.topic.endswith(("/units", "/events"))]
    for i, (kind, doc) in enumerate(order):
        if kind == "units" and doc["body"]["verdict"] == "fail":
            serial = doc["body"]["serial"]
            ncs = [j for j, (k, d) in enumerate(order) if k == "events" and d["body"].get("serial") == serial
                   and d["body"]["kind"] == "nonconformance"]
            assert ncs and ncs[0] < i, f"NC for {serial} must precede its unit record"


async def test_nonconformance_overtakes_a_telemetry_backlog(tmp_path, broker, capture):
    # An outage left 300k samples unsent; then an out-of-limit unit is made.
    cfg_path = tmp_path / "buffer.duckdb"
    buf = DuckDBBuffer(cfg_path, AGENT_ID)
    n = 10_000
    table = SampleBatch("backlog", [f"t{i}" for i in range(n)], [float(i) for i in range(n)],
                        [Quality.GOOD] * n, [None] * n, 1).to_arrow()
    buf.append(pa.concat_tables([table] * 30))
    buf.close()
    model = StationModel(seed=2, cycle_time=2.0, idle_time=0.5, out_of_limit_share=1.0,
                         out_of_limit_parameters=("temperature",), keep_units=100)
    async with ModbusStationServer(model, port=0, speed=SPEED) as sim:
        cfg = example_line(tmp_path, broker, sim.port, mqtt={"max_inflight": 4, "telemetry_batch": 100})
        async with running_agent(cfg):
            await capture.until(lambda m: any(p["body"]["kind"] == "nonconformance"
                                              for p in payloads(m, "/events")), timeout=60)
            backlog_seen = len([s for s in telemetry_samples(capture.messages) if s["device"] == "backlog"])
            nc = next(m for m in capture.messages if m.topic.endswith("/events")
                      and orjson.loads(m.payload)["body"]["kind"] == "nonconformance")
            serial = orjson.loads(nc.payload)["body"]["serial"]
            # (a unit already under way at the agent's start may have its record before)
            await capture.until(lambda m: any(u["body"]["serial"] == serial for u in units_of(m)), timeout=30)
    assert backlog_seen < 300_000, "the event arrived while the telemetry backlog was still draining"
    unit_at = next(m.t for m in capture.messages if m.topic.endswith("/units")
                   and orjson.loads(m.payload)["body"]["serial"] == serial)
    assert nc.t < unit_at


async def test_device_lost_mid_cycle_gives_incomplete_unit_and_event(tmp_path, broker, capture):
    clock = ModelClock(0.0)
    model = StationModel(seed=4, cycle_time=2.0, idle_time=0.5, out_of_limit_share=0.0)
    sim = ModbusStationServer(model, port=0, clock=clock)
    await sim.start()
    try:
        cfg = example_line(tmp_path, broker, sim.port, poll="20ms")
        async with running_agent(cfg) as agent:
            # idle first, so the agent sees the rising edge of the next cycle
            clock.t = 0.1
            await asyncio.sleep(0.3)
            clock.t = model.next_unit_start + 0.3
            assert sim.snapshot().state != State.IDLE
            await asyncio.sleep(0.3)
            serial = sim.snapshot().serial
            await sim.stop()  # the PLC disappears mid-cycle
            await capture.until(lambda m: len(units_of(m)) >= 1, timeout=15)
            assert agent.stats.devices["sealer1"].state == "lost"
    finally:
        await sim.stop()
    validate_records(capture.messages)
    [unit] = [u["body"] for u in units_of(capture.messages)]
    assert unit["serial"] == serial and unit["verdict"] == "incomplete"
    assert "lost mid-cycle" in unit["reasons"][0]
    kinds = [p["body"]["kind"] for p in payloads(capture.messages, "/events")]
    assert "unit_incomplete" in kinds and kinds.count("device_state") >= 2


async def test_hash_chain_continues_across_an_agent_restart(tmp_path, broker, capture):
    model = StationModel(seed=9, cycle_time=2.0, idle_time=0.5, out_of_limit_share=0.2, keep_units=100)
    async with ModbusStationServer(model, port=0, speed=SPEED) as sim:
        cfg = example_line(tmp_path, broker, sim.port)
        async with running_agent(cfg):
            await capture.until(lambda m: len(units_of(m)) >= 3, timeout=30)
        first_run = len(units_of(capture.messages))
        async with running_agent(cfg):
            await capture.until(lambda m: len(units_of(m)) >= first_run + 3, timeout=30)

    capture_file = tmp_path / "capture.jsonl"
    capture_file.write_bytes(b"".join(m.payload + b"\n" for m in capture.messages
                                      if m.topic.endswith(("/units", "/events", "/telemetry"))))
    report = verify([capture_file])
    assert report.ok, [str(f) for f in report.findings]
    seqs = [u["seq"] for u in units_of(capture.messages)]
    assert sorted(set(seqs)) == list(range(1, max(seqs) + 1))
