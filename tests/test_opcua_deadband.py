"""Report by exception for OPC UA devices in `mode: poll`: the agent applies the tags' absolute
deadband and max_silence (in `mode: subscribe` the server filters); against the real OPC UA station
simulator, through a real agent into its buffer: fewer samples, seqs contiguous, one `$polls` per
poll, every value held within the deadband of what was read unfiltered."""

from __future__ import annotations

import asyncio
import contextlib
import time

import duckdb
import numpy as np
from agent_helpers import line_config, running_agent
from fixtures_opcua import station_config
from fixtures_sim import ModelClock

from linetap.agent.deadband import POLLS_TAG
from linetap.simulators import STATION_OPCUA_TAGS, OpcUaStationServer, StationModel

BAND = 0.5  # degC


def test_rules_only_in_poll_mode() -> None:
    tags = [{**t, "deadband": {"type": "absolute", "value": BAND}} if t["name"] == "temperature" else t
            for t in STATION_OPCUA_TAGS]
    polled = station_config("opc.tcp://127.0.0.1:4840", mode="poll", tags=tags, max_silence="5s")
    rules = polled.exception_rules()
    assert rules["temperature"].absolute == BAND and rules["temperature"].max_silence == 5.0
    assert rules["pressure"].absolute is None and rules["pressure"].max_silence == 5.0  # any change, 5 s
    assert station_config("opc.tcp://127.0.0.1:4840", tags=tags).exception_rules() is None  # the server's job
    assert station_config("opc.tcp://127.0.0.1:4840", mode="poll").exception_rules() is None


def _telemetry(path) -> list[tuple]:
    with contextlib.closing(duckdb.connect(str(path), read_only=True)) as con:
        return con.execute("SELECT seq, tag, num, agent_ts FROM telemetry ORDER BY seq").fetchall()


async def test_poll_mode_deadband_through_the_agent(tmp_path, broker):
    """A hand-driven model clock: each 50 ms model step is served (the server's update tick) and
    polled twice by the agent before the next; the temperature the MES holds after each step is
    within the deadband of the model's (or the next step's: a poll in flight across a step)."""
    model = StationModel(seed=5, cycle_time=2.0, idle_time=0.5)
    clock = ModelClock(0.0)
    tags = [{**t, "deadband": {"type": "absolute", "value": BAND}} if t["name"] == "temperature" else t
            for t in STATION_OPCUA_TAGS]
    path = tmp_path / "line pc-1" / "opcua-buffer.duckdb"
    path.parent.mkdir()
    server = OpcUaStationServer(model, host="127.0.0.1", port=0, clock=clock, update_interval=0.01)
    await server.start()
    truth, done = [], []
    try:
        device = {"protocol": "opcua", "name": "sealer1", "endpoint": server.endpoint, "timeout": "2s",
                  "mode": "poll", "poll_interval": "20ms", "tags": tags, "max_silence": "1s"}
        cfg = line_config(path.parent, broker, [device], buffer={"path": str(path)})
        async with running_agent(cfg) as agent:
            status = agent.stats.devices["sealer1"]

            async def served_and_polled_twice() -> None:
                await asyncio.sleep(0.03)  # the server's update tick has written the step
                before = status.batches
                while status.batches < before + 2:
                    await asyncio.sleep(0.005)

            t = 0.0
            await asyncio.wait_for(served_and_polled_twice(), 10)
            while t < 6.0:  # two and a half units
                truth.append(server.snapshot().temperature)
                done.append(time.time_ns() // 1000)
                t += 0.05
                clock.t = t
                await asyncio.wait_for(served_and_polled_twice(), 10)
            truth.append(server.snapshot().temperature)
            done.append(time.time_ns() // 1000)
            await asyncio.sleep(1.5)  # held values: max_silence re-sends them
    finally:
        await server.stop()
    rows = _telemetry(path)
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1))  # filtered samples take no seq
    polls = [r for r in rows if r[1] == POLLS_TAG]
    assert [int(r[2]) for r in polls] == list(range(1, len(polls) + 1)) and len(polls) >= 2 * len(truth)
    temps = [(r[3], r[2]) for r in rows if r[1] == "temperature"]
    assert len(temps) < 0.5 * len(polls), (len(temps), len(polls))  # most polls held back
    ts = np.array([a for a, _ in temps])
    held = [temps[int(np.searchsorted(ts, d, side="right")) - 1][1] for d in done[1:]]
    bad = [(k, h, truth[k + 1]) for k, h in enumerate(held)
           if not any(abs(h - v) <= BAND + 1e-6 for v in truth[k + 1:k + 3])]
    assert not bad, bad[:5]
    assert len({round(v, 3) for v in truth}) > 20  # the model moved (ramps, holds, cooling)
    gaps = np.diff([r[3] for r in rows if r[1] == "setpoint"])  # no deadband: any change, re-sent by max_silence
    assert len(gaps) >= 1 and max(gaps) <= 1.0e6 + max(np.diff([r[3] for r in polls])) + 1000
