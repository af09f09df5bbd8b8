"""The whole line: Modbus station simulator -> agent -> DuckDB buffer -> Mosquitto -> subscriber."""

from __future__ import annotations

import asyncio
import math
import signal
import subprocess
import sys
import time

import orjson
from agent_helpers import (
    AGENT_ID,
    TOPIC_ROOT,
    known_value_tags,
    line_config,
    modbus_device,
    payloads,
    running_agent,
    start_simulator_process,
    telemetry_samples,
)
from fixtures_sim import ModelClock

from linetap.buffers import DuckDBBuffer
from linetap.simulators import KNOWN_VALUES, STATION_TAGS, ModbusStationServer, StationModel


async def test_values_arrive_as_served_with_contiguous_seq(tmp_path, broker, capture):
    clock = ModelClock(3.0)  # a frozen station: every poll serves the same values
    model = StationModel(seed=3, cycle_time=2.0, idle_time=0.5)
    async with ModbusStationServer(model, port=0, clock=clock) as sim:
        snap = sim.snapshot()
        tags = [*known_value_tags(), *[{**t, "name": f"st_{t['name']}"} for t in STATION_TAGS]]
        cfg = line_config(tmp_path, broker, [modbus_device(sim.port, tags=tags)])
        async with running_agent(cfg) as agent:
            await capture.until(lambda m: len(telemetry_samples(m)) >= 5 * len(tags), timeout=15)
        assert agent.stats.samples_buffered >= 5 * len(tags)

    # Everything buffered was delivered (the clean stop waits for acknowledgements).
    samples = telemetry_samples(capture.messages)
    seqs = [s["seq"] for s in samples]
    assert seqs == list(range(1, len(seqs) + 1)), "contiguous, in order, no duplicates"
    assert len(seqs) == agent.stats.samples_buffered

    by_tag: dict[str, list] = {}
    for s in samples:
        assert s["quality"] == "good", s
        by_tag.setdefault(s["tag"], []).append(s["value"])
    for fields, expected in KNOWN_VALUES:
        got = by_tag[fields["name"]]
        if isinstance(expected, bool):
            assert got[0] == int(expected), fields
        elif isinstance(expected, int) and abs(expected) > 2**53:
            assert got[0] == str(expected), fields  # exact, as text
        elif isinstance(expected, float):
            assert math.isclose(got[0], expected, rel_tol=1e-12), fields
        else:
            assert got[0] == expected, fields
    assert by_tag["st_serial"][0] == snap.serial
    assert by_tag["st_operator"][0] == snap.operator
    assert math.isclose(by_tag["st_temperature"][0], snap.temperature, rel_tol=1e-6)
    assert by_tag["st_unit_count"][0] == snap.unit_count
    assert by_tag["st_cycle_active"][0] == int(snap.cycle_active)

    # Topics and envelope.
    topics = {m.topic for m in capture.messages}
    assert f"{TOPIC_ROOT}/sealer1/telemetry" in topics
    status = [orjson.loads(m.payload) for m in capture.messages if m.topic.endswith("/status")]
    assert status[0]["state"] == "online" and status[-1]["state"] == "offline"
    events = payloads(capture.messages, "/events")
    assert [e["body"]["state"] for e in events if e["body"]["kind"] == "device_state"] == ["connected"]
    assert events[0]["id"] == f"{AGENT_ID}/events/1"


async def test_broker_outage_loses_nothing(tmp_path, broker, capture):
    model = StationModel(seed=5, cycle_time=1.0, idle_time=0.2)
    async with ModbusStationServer(model, port=0) as sim:
        cfg = line_config(tmp_path, broker, [modbus_device(sim.port, poll_interval="20ms")])
        async with running_agent(cfg) as agent:
            await capture.until(lambda m: len(telemetry_samples(m)) > 200, timeout=10)
            broker.stop()
            await asyncio.sleep(1.5)  # the agent keeps polling and buffering meanwhile
            buffered_during_outage = agent.stats.samples_buffered
            broker.start()
            await capture.until(
                lambda m: max((s["seq"] for s in telemetry_samples(m)), default=0) >= buffered_during_outage,
                timeout=20)
        total = agent.stats.samples_buffered

    samples = telemetry_samples(capture.messages)
    first_seen: dict[int, dict] = {}
    for s in samples:
        if s["seq"] in first_seen:
            dup = first_seen[s["seq"]]
            assert (dup["tag"], dup["value"], dup["id"]) == (s["tag"], s["value"], s["id"]), "duplicate differs"
        else:
            first_seen[s["seq"]] = s
    assert sorted(first_seen) == list(range(1, total + 1)), "every buffered sample arrived"


async def test_modbus_server_down_gives_bad_quality_and_device_state_then_recovers(tmp_path, broker, capture):
    model = StationModel(seed=5)
    sim = ModbusStationServer(model, port=0)
    await sim.start()
    try:
        cfg = line_config(tmp_path, broker, [modbus_device(sim.port, poll_interval="50ms")])
        async with running_agent(cfg):
            await capture.until(lambda m: len(telemetry_samples(m)) > 20, timeout=10)
            await sim.stop()
            await capture.until(lambda m: any(s["quality"] == "bad" for s in telemetry_samples(m)), timeout=10)
            await sim.start()
            await capture.until(
                lambda m: any(e["body"].get("state") == "recovered" for e in payloads(m, "/events")), timeout=10)
            n = len(telemetry_samples(capture.messages))
            await capture.until(lambda m: len(telemetry_samples(m)) > n + 20, timeout=10)
    finally:
        await sim.stop()

    states = [e["body"]["state"] for e in payloads(capture.messages, "/events")
              if e["body"]["kind"] == "device_state"]
    assert states == ["connected", "lost", "recovered"]
    bad = [s for s in telemetry_samples(capture.messages) if s["quality"] == "bad"]
    assert {s["tag"] for s in bad} == {t["name"] for t in STATION_TAGS}
    assert all(s["value"] is None and s["reason"] for s in bad)
    last = telemetry_samples(capture.messages)[-1]
    assert last["quality"] == "good"


def test_sigterm_stops_linetap_run_cleanly(tmp_path, broker):
    """`linetap run` in a subprocess: SIGTERM -> exit 0, everything committed is in the buffer."""
    sim_proc, port = start_simulator_process()
    try:
        cfg_path = tmp_path / "line.yaml"
        cfg = line_config(tmp_path, broker, [modbus_device(port, poll_interval="50ms")],
                          logging={"format": "json", "level": "info"})
        cfg_path.write_text(_yaml(cfg))
        agent = subprocess.Popen([sys.executable, "-m", "linetap.agent.cli", "run", str(cfg_path)],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(3)
        agent.send_signal(signal.SIGTERM)
        out, _ = agent.communicate(timeout=20)
        assert agent.returncode == 0, out.decode()
        assert b"Traceback" not in out
        assert b"agent stopped" in out
    finally:
        sim_proc.send_signal(signal.SIGINT)
        sim_proc.wait(10)
    buf = DuckDBBuffer(cfg.buffer.path, AGENT_ID)
    try:
        assert buf.last_seq("telemetry") > 0
        stats = {s.stream: s for s in buf.stats("mqtt")}
        assert stats["telemetry"].pending == 0, "the clean stop delivered what it had"
    finally:
        buf.close()


def _yaml(cfg) -> str:
    import json

    return json.dumps(cfg.model_dump(mode="json", exclude_none=True))  # JSON is YAML

