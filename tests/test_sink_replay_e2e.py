"""A broker that drops (Mosquitto with a small `max_queued_messages`, as its default 1000 does
for a slow subscriber), a sink that falls behind (SIGSTOP, then SIGCONT), every part real: the
Modbus simulator, `linetap run` of the shipped example, `linetap sink` (the installed command).
The sink finds the holes no gap event covers, asks the agent, the agent re-sends from its buffer,
and in the end the database holds every record of the buffer exactly once and `audit` passes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from fixtures_broker import Broker
from sink_helpers import LINETAP, SinkProc, linetap, query
from test_sink_e2e import exported, samples, sink_db  # noqa: F401 (sink_db: the DuckDB and PostgreSQL targets)
from test_user_path import Simulator, copy_example, stop_agent, wait_up

from linetap.agent.sink.db import to_us


@pytest.fixture
def dropping_broker(tmp_path):
    b = Broker(tmp_path / "broker")
    if b.kind != "mosquitto":
        pytest.skip("needs Mosquitto: the embedded broker has no max_queued_messages to drop with")
    conf = b.conf_path.read_text()
    b.conf_path.write_text(conf.replace("max_queued_messages 0", "max_queued_messages 10")
                           .replace("max_inflight_messages 100", "max_inflight_messages 5"))
    b.start()
    try:
        yield b
    finally:
        b.stop()


def log_spans(log, event: str) -> list[tuple[str, int, int]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if f'"{event}"' in line:
            doc = json.loads(line)
            out.append((doc["stream"], doc["seq_first"], doc["seq_last"]))
    return out


def covered(spans: list[tuple[str, int, int]], by: list[tuple[str, int, int]]) -> bool:
    return all(any(s == t and x <= a and b <= y for t, x, y in by) for s, a, b in spans)


@pytest.mark.timeout(240)
def test_what_the_broker_dropped_is_asked_for_and_replayed(sink_db, dropping_broker, tmp_path):  # noqa: F811
    broker = dropping_broker
    log = tmp_path / "mes-sink-1.log"
    sink = SinkProc(broker, sink_db, log, "--replay-after", "2", client_id="mes-sink-1")
    sim = Simulator("modbus", "--speed", "2", "--out-of-limit", "0.3")
    agent = None
    try:
        config = copy_example("heat-sealer-modbus.yaml", tmp_path,
                              {"port: 1883": f"port: {broker.port}", "port: 5020": f"port: {sim.port}"})
        agent = subprocess.Popen([LINETAP, "run", str(config)], cwd=tmp_path, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        wait_up(tmp_path / "heat-sealer-buffer.duckdb", agent)
        time.sleep(3)
        os.kill(sink.proc.pid, signal.SIGSTOP)  # the sink falls behind: 5 in flight, 10 queued, the rest dropped
        time.sleep(6)
        os.kill(sink.proc.pid, signal.SIGCONT)
        time.sleep(2)
        sim.stop()  # production ends; the agent stays up to answer
        deadline = time.monotonic() + 120
        while True:
            asked, recovered = log_spans(log, "sink asked for a replay"), log_spans(log, "sink recovered a range")
            if asked and covered(asked, recovered):
                break
            assert time.monotonic() < deadline, f"asked {asked}, recovered {recovered}:\n{sink.text()[-3000:]}"
            time.sleep(0.5)
        stop_agent(agent)
        agent = None
        time.sleep(3)
    finally:
        if agent is not None:
            agent.kill()
        sim.stop()
        os.kill(sink.proc.pid, signal.SIGCONT)
        sink.stop()
    print("asked:", asked, "recovered:", recovered)
    assert any(s == "telemetry" for s, _, _ in asked), asked  # the broker did drop

    units, events = exported(config, "units", tmp_path), exported(config, "events", tmp_path)
    tel = samples(exported(config, "telemetry", tmp_path))
    for stream, records in (("units", units), ("events", events)):
        got = [seq for (seq,) in query(sink_db, f"SELECT seq FROM {stream} ORDER BY seq")]
        assert got == [r["seq"] for r in records], f"{stream}: db {len(got)} records, the buffer {len(records)}"
    rows = query(sink_db, "SELECT seq, tag, agent_ts FROM telemetry ORDER BY seq")
    assert [(seq, tag, to_us(ts)) for seq, tag, ts in rows] == [(s[0], s[2], s[7]) for s in tel]
    r = linetap("audit", "--db", sink_db, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    outcomes = query(sink_db, "SELECT outcome, count(*) FROM sink_replays GROUP BY outcome ORDER BY outcome")
    assert dict(outcomes).keys() == {"requested", "recovered"}, outcomes
