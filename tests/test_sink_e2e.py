"""The MES side end to end, every part real: the Modbus simulator, `linetap run` of the shipped
example, a private Mosquitto, and `linetap sink` (the installed command) killed -9 and restarted
mid-run, into DuckDB and into a private PostgreSQL. Every record of the agent's buffer (`linetap
export`) is in the database exactly once; `audit` passes, then catches an altered and a deleted
row; `trace` of a produced serial gives the exported unit record."""

from __future__ import annotations

import json
import subprocess
import time

import orjson
import pytest
from sink_helpers import LINETAP, SinkProc, linetap, query
from test_user_path import Simulator, copy_example, jsonl, stop_agent, wait_up

from linetap.agent.sink.db import to_us


@pytest.fixture(params=["duckdb", "postgresql"])
def sink_db(request, tmp_path) -> str:
    if request.param == "duckdb":
        return str(tmp_path / "mes.duckdb")
    return request.getfixturevalue("postgres_server").new_database()


def exported(config, stream: str, folder) -> list[dict]:
    out = folder / f"{stream}.jsonl"
    r = linetap("export", str(config), "--stream", stream, "--output", str(out))
    assert r.returncode == 0, r.stderr
    return jsonl(out)


def samples(envelopes: list[dict]) -> list[tuple]:
    out = []
    for doc in envelopes:
        s = doc["samples"]
        for i in range(doc["count"]):
            out.append((doc["seq"] + i, doc["device"], s["tag"][i], s["value"][i], s["quality"][i], s["reason"][i],
                        s["source_ts"][i], s["agent_ts"][i]))
    return out


@pytest.mark.timeout(240)
def test_every_buffered_record_once_across_sink_kill9(sink_db, broker, tmp_path):
    """DuckDB (one writer): one sink. PostgreSQL: two sinks sharing a subscription ($share/mes/#)."""
    sim = Simulator("modbus", "--speed", "2", "--out-of-limit", "0.3")
    agent = None
    n_sinks = 2 if sink_db.startswith("postgresql://") else 1
    share = ["--share", "mes"] if n_sinks > 1 else []
    logs = [tmp_path / f"sink-{i}.log" for i in range(n_sinks)]
    # subscribed (persistent sessions) before the agent publishes
    sinks = [SinkProc(broker, sink_db, logs[i], *share, client_id=f"sink-{i}") for i in range(n_sinks)]
    try:
        config = copy_example("heat-sealer-modbus.yaml", tmp_path,
                              {"port: 1883": f"port: {broker.port}", "port: 5020": f"port: {sim.port}"})
        buffer = tmp_path / "heat-sealer-buffer.duckdb"
        agent = subprocess.Popen([LINETAP, "run", str(config)], cwd=tmp_path, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        wait_up(buffer, agent)
        time.sleep(6)
        sinks[0].kill9()  # mid-run: messages received but not yet committed/acknowledged are re-sent to it
        time.sleep(2)  # the broker queues for the absent sink's session meanwhile
        sinks[0] = SinkProc(broker, sink_db, logs[0], *share, client_id="sink-0")
        time.sleep(6)
        sim.stop()
        time.sleep(3)  # the agent's last events (device lost, incomplete unit) go out
        stop_agent(agent)
        agent = None
        time.sleep(3)
    finally:
        if agent is not None:
            agent.kill()
        sim.stop()
        for sink in sinks:
            sink.stop()
    stopped = [json.loads(line) for log in logs for line in log.read_text().splitlines() if "sink stopped" in line]
    print(stopped)
    if n_sinks > 1:  # both sinks of the group stored records
        assert all(doc.get("telemetry", 0) > 0 for doc in stopped), stopped

    units, events = exported(config, "units", tmp_path), exported(config, "events", tmp_path)
    tel = samples(exported(config, "telemetry", tmp_path))
    assert len(units) >= 4 and len(tel) > 1000, (len(units), len(tel))

    for stream, records in (("units", units), ("events", events)):
        rows = query(sink_db, f"SELECT seq, id, recorded_at, body, prev_hash, hash FROM {stream} ORDER BY seq")
        got = [(seq, rid, rec, orjson.loads(body), ph, h) for seq, rid, rec, body, ph, h in rows]
        want = [(r["seq"], r["id"], r["recorded_at"], r["body"], r["prev_hash"], r["hash"]) for r in records]
        assert got == want, f"{stream}: db holds {len(got)} records, the buffer {len(want)}"
    rows = query(sink_db, "SELECT seq, device, tag, value, quality, reason, source_ts, agent_ts FROM telemetry "
                          "ORDER BY seq")
    got = [(seq, dev, tag, orjson.loads(v), q, reason, to_us(sts), to_us(ats))
           for seq, dev, tag, v, q, reason, sts, ats in rows]
    assert len(got) == len(tel) and got == tel, f"telemetry: db holds {len(got)} samples, the buffer {len(tel)}"
    assert query(sink_db, "SELECT count(*) FROM sink_problems") == [(0,)]

    r = linetap("audit", "--db", sink_db, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    streams = {s["stream"]: s for s in json.loads(r.stdout)["streams"]}
    assert streams["units"]["held"] == len(units) and streams["telemetry"]["held"] == len(tel)

    unit = next(u for u in units if u["body"]["serial"])
    serial = unit["body"]["serial"]
    r = linetap("trace", serial, "--db", sink_db, "--format", "json")
    assert r.returncode == 0, r.stderr
    tr = json.loads(r.stdout)
    assert [u["body"] for u in tr["units"]] == [u["body"] for u in units if u["body"]["serial"] == serial]
    assert all(u["chain"]["verified"] for u in tr["units"]), tr["units"]
    ncs = [e["body"] for e in events if e["body"].get("serial") == serial
           and e["body"]["kind"] in ("nonconformance", "unit_incomplete")]
    assert [e["body"] for e in tr["events"]] == ncs
    r = linetap("trace", serial, "--db", sink_db)
    assert r.returncode == 0 and serial in r.stdout and unit["body"]["station"] in r.stdout, r.stdout

    middle = events[len(events) // 2]["seq"]
    query(sink_db, "UPDATE events SET body = replace(body, '\"kind\"', '\"kinx\"') WHERE seq = ?", (middle,))
    r = linetap("audit", "--db", sink_db)
    assert r.returncode == 1 and f"{events[0]['agent']}/events" in r.stdout and "chain break" in r.stdout, r.stdout
    query(sink_db, "DELETE FROM telemetry WHERE seq = ?", (len(tel) // 2,))
    r = linetap("audit", "--db", sink_db, "--json")
    assert r.returncode == 1
    t = next(s for s in json.loads(r.stdout)["streams"] if s["stream"] == "telemetry")
    assert t["missing"] == [[len(tel) // 2, len(tel) // 2]], t
