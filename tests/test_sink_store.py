"""`linetap sink`, `audit`, `trace` on records published by hand (a real Mosquitto, the installed
command), against DuckDB and a real PostgreSQL: duplicates stored once, a differing duplicate
recorded, foreign payloads ignored with a warning, audit catching deleted and altered rows;
and the command line's answers to bad input and unreachable services."""

from __future__ import annotations

import json
import time

import orjson
import paho.mqtt.client as mqtt
import pytest
from sink_helpers import SinkProc, linetap, query, tls_broker_with_password
from test_config_tls import pki  # noqa: F401 (fixture: a CA, server and client certificates)

from linetap.buffers.integrity import GENESIS, record_hash
from linetap.simulators.net import free_port

AGENT = "crafted-line"
ROOT = "acme/cork/packaging/line9"


@pytest.fixture(params=["duckdb", "postgresql"])
def sink_db(request, tmp_path) -> str:
    if request.param == "duckdb":
        return str(tmp_path / "mes sink.duckdb")
    return request.getfixturevalue("postgres_server").new_database()


def unit_record(seq: int, prev_hash: str, serial: str, operator: str = "OP-1") -> dict:
    body = {"kind": "unit", "serial": serial, "lot": "LOT-7", "station": "sealer1", "device": "sealer1",
            "operator": operator, "started_at": 1795555205900000 + seq * 3_000_000,
            "ended_at": 1795555207950000 + seq * 3_000_000, "cycle_time": 2.05,
            "parameters": [{"name": "seal_temperature_max", "reduce": "max", "tag": "seal_temperature",
                            "value": 186.9 if seq == 2 else 180.0, "unit": "degC", "low": 175.0, "high": 185.0,
                            "spec": "WI-SEAL-007 rev B", "verdict": "fail" if seq == 2 else "pass"}],
            "verdict": "fail" if seq == 2 else "pass", "reasons": [], "config_version": "sha256:abc"}
    rid, recorded_at = f"{AGENT}/units/{seq}", 1795555208000000 + seq * 3_000_000
    h = record_hash(prev_hash, id=rid, stream="units", seq=seq, recorded_at=recorded_at, body=body)
    return {"schema": "linetap.unit/1", "id": rid, "agent": AGENT, "stream": "units", "seq": seq,
            "sent_at": recorded_at + 5, "recorded_at": recorded_at, "prev_hash": prev_hash, "hash": h, "body": body}


def telemetry(seq: int, n: int) -> dict:
    return {"schema": "linetap.telemetry/2", "id": f"{AGENT}/telemetry/{seq}-{seq + n - 1}", "agent": AGENT,
            "stream": "telemetry", "seq": seq, "seq_last": seq + n - 1, "count": n, "sent_at": 1,
            "device": "sealer1", "station": "sealer1",
            "samples": {"tag": ["t"] * n, "value": [1, 2.5, True][:n], "quality": ["good"] * n, "reason": [None] * n,
                        "source_ts": [None] * n, "agent_ts": [1795555205900000 + i for i in range(n)]}}


def publish_all(broker, messages: list[tuple[str, bytes]]) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="crafted-publisher")
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        for topic, payload in messages:
            c.publish(topic, payload, qos=1).wait_for_publish(5)
    finally:
        c.disconnect()
        c.loop_stop()


@pytest.mark.timeout(120)
def test_duplicates_once_differing_recorded_audit_and_trace(sink_db, broker, tmp_path):
    u1 = unit_record(1, GENESIS, "SN-1")
    u2 = unit_record(2, u1["hash"], "SN-2")
    u3 = unit_record(3, u2["hash"], "SN-3")
    u2_other = {**u2, "body": {**u2["body"], "operator": "OP-forged"}}
    t = telemetry(1, 3)
    sink = SinkProc(broker, sink_db, tmp_path / "sink.log")
    try:
        # u3 before u2: links are checked once the predecessor lands
        publish_all(broker, [(f"{ROOT}/sealer1/units", orjson.dumps(u)) for u in (u1, u3, u2, u2, u2_other)]
                    + [(f"{ROOT}/sealer1/telemetry", orjson.dumps(t))] * 2
                    + [(f"{ROOT}/_agent/{AGENT}/status", b'{"schema": "linetap.status/1", "agent": "x"}'),
                       (f"{ROOT}/sealer1/other", b"hello, not a record"),
                       (f"{ROOT}/sealer1/other", b'{"schema": "acme.thing/1"}'),
                       (f"{ROOT}/sealer1/telemetry", orjson.dumps({**telemetry(50, 1), "samples": {
                           **telemetry(50, 1)["samples"], "agent_ts": ["yesterday"]}}))])
        time.sleep(1.5)
        if not sink_db.startswith("postgresql://"):  # DuckDB has one writer: a clear message, exit 3
            r = linetap("audit", "--db", sink_db)
            assert r.returncode == 3 and "in use by another process" in r.stderr, r.stderr
    finally:
        sink.stop()
    log = sink.text()
    assert "not a linetap record" in log and "not JSON" in log and "acme.thing/1" in log, log[-2000:]
    assert "timestamp types" in log, log[-2000:]  # a malformed telemetry payload is ignored, not stored

    assert query(sink_db, "SELECT seq, serial, operator FROM units ORDER BY seq") == [
        (1, "SN-1", "OP-1"), (2, "SN-2", "OP-1"), (3, "SN-3", "OP-1")]
    rows = query(sink_db, "SELECT seq, value, quality FROM telemetry ORDER BY seq")
    assert rows == [(1, "1", "good"), (2, "2.5", "good"), (3, "true", "good")]
    assert query(sink_db, "SELECT stream, seq, kind FROM sink_problems") == [("units", 2, "duplicate_differs")]
    streams = query(sink_db, "SELECT stream, seq_first, seq_last, held, missing FROM sink_streams ORDER BY stream")
    assert streams == [("telemetry", 1, 3, 3, 0), ("units", 1, 3, 3, 0)]

    r = linetap("audit", "--db", sink_db)
    assert r.returncode == 1 and "duplicate with other content: seq 2" in r.stdout, r.stdout + r.stderr
    query(sink_db, "DELETE FROM sink_problems")
    r = linetap("audit", "--db", sink_db, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert doc["ok"] and {(s["stream"], s["held"]) for s in doc["streams"]} == {("units", 3), ("telemetry", 3)}

    r = linetap("trace", "SN-2", "--db", sink_db, "--format", "json")
    assert r.returncode == 0, r.stderr
    tr = json.loads(r.stdout)
    assert [u["body"] for u in tr["units"]] == [u2["body"]] and tr["units"][0]["chain"]["verified"]
    r = linetap("trace", "SN-2", "--db", sink_db)
    assert r.returncode == 0 and "seal_temperature_max: 186.9 degC   limits 175.0..185.0" in r.stdout, r.stdout
    assert "chain verified" in r.stdout and "operator OP-1" in r.stdout
    assert linetap("trace", "SN-nope", "--db", sink_db).returncode == 1

    # an altered row: its hash no longer matches (audit 1, trace says so)
    query(sink_db, "UPDATE units SET body = replace(body, 'OP-1', 'OP-9') WHERE seq = 2")
    r = linetap("audit", "--db", sink_db)
    assert r.returncode == 1 and "chain break" in r.stdout and "altered" in r.stdout, r.stdout
    r = linetap("trace", "SN-2", "--db", sink_db)
    assert "CHAIN NOT VERIFIED" in r.stdout, r.stdout
    # a deleted row: a missing seq
    query(sink_db, "DELETE FROM units WHERE seq = 2")
    r = linetap("audit", "--db", sink_db, "--json")
    assert r.returncode == 1, r.stdout
    units = next(s for s in json.loads(r.stdout)["streams"] if s["stream"] == "units")
    assert units["missing"] == [[2, 2]] and units["ranges"] == [[1, 1], [3, 3]]


def test_gap_events_cover_missing_telemetry(sink_db, broker, tmp_path):
    gap_body = {"kind": "gap", "stream": "telemetry", "seq_first": 4, "seq_last": 9, "count": 6,
                "reason": "size cap", "ts": 1795555205900000}
    rid = f"{AGENT}/events/1"
    gap = {"schema": "linetap.event/1", "id": rid, "agent": AGENT, "stream": "events", "seq": 1, "sent_at": 1,
           "recorded_at": 5, "prev_hash": GENESIS, "body": gap_body,
           "hash": record_hash(GENESIS, id=rid, stream="events", seq=1, recorded_at=5, body=gap_body)}
    sink = SinkProc(broker, sink_db, tmp_path / "sink.log")
    try:
        publish_all(broker, [(f"{ROOT}/sealer1/telemetry", orjson.dumps(telemetry(1, 3))),
                             (f"{ROOT}/sealer1/telemetry", orjson.dumps(telemetry(10, 2))),
                             (f"{ROOT}/_line/events", orjson.dumps(gap))])
        time.sleep(1.0)
    finally:
        sink.stop()
    r = linetap("audit", "--db", sink_db, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    tel = next(s for s in json.loads(r.stdout)["streams"] if s["stream"] == "telemetry")
    assert tel["missing"] == [] and tel["missing_covered"] == [[4, 9]]
    query(sink_db, "DELETE FROM events")
    r = linetap("audit", "--db", sink_db)
    assert r.returncode == 1 and "missing: 6 record(s), seq 4..9" in r.stdout, r.stdout


def test_bad_input_exit_2_unreachable_exit_3(tmp_path):
    db = str(tmp_path / "x.duckdb")
    for args in (["sink", "--broker", "no-port", "--db", db], ["sink", "--broker", "h:99999", "--db", db],
                 ["sink", "--broker", "127.0.0.1:1884", "--db", db, "--topic", "a/#/b"],
                 ["sink", "--broker", "127.0.0.1:1884", "--db", str(tmp_path)],
                 ["sink", "--broker", "127.0.0.1:1884", "--db", str(tmp_path / "no folder" / "x.duckdb")],
                 ["sink", "--broker", "127.0.0.1:1884", "--db", "mysql://x@h/db"],
                 ["audit", "--db", db], ["audit", "--db", str(tmp_path)],
                 ["trace", "SN-1", "--db", db], ["trace", "SN-1", "--db", db, "--format", "html"]):
        r = linetap(*args)
        assert r.returncode == 2, f"{args}: {r.returncode}\n{r.stdout}{r.stderr}"
        assert r.stderr.strip(), args
    port = free_port()
    r = linetap("sink", "--broker", f"127.0.0.1:{port}", "--db", db)
    assert r.returncode == 3 and f"cannot reach the MQTT broker at 127.0.0.1:{port}" in r.stderr, r.stderr
    r = linetap("audit", "--db", f"postgresql://nobody@127.0.0.1:{port}/mes")
    assert r.returncode == 3 and "cannot connect to PostgreSQL" in r.stderr, r.stderr


@pytest.mark.timeout(120)
def test_puback_only_after_commit(postgres_server, broker, tmp_path):
    """A record whose commit cannot happen (the table locked by another session) is not
    acknowledged: the sink killed -9 meanwhile gets it again from the broker when it restarts."""
    import psycopg

    db = postgres_server.new_database()
    u1 = unit_record(1, GENESIS, "SN-1")
    sink = SinkProc(broker, db, tmp_path / "sink.log")
    blocker = psycopg.connect(db)
    try:
        blocker.execute("LOCK TABLE units IN ACCESS EXCLUSIVE MODE")
        publish_all(broker, [(f"{ROOT}/sealer1/units", orjson.dumps(u1))])
        time.sleep(1.5)  # the sink has it and waits on the lock: no commit, so no PUBACK
        sink.kill9()
    finally:
        blocker.rollback()
        blocker.close()
    assert query(db, "SELECT count(*) FROM units") == [(0,)]
    sink = SinkProc(broker, db, tmp_path / "sink.log")  # same client id: the session's unacked message
    try:
        deadline = time.monotonic() + 10
        while query(db, "SELECT count(*) FROM units") != [(1,)]:
            assert time.monotonic() < deadline, "the unacknowledged record was not re-delivered"
            time.sleep(0.1)
    finally:
        sink.stop()
    assert query(db, "SELECT hash FROM units") == [(u1["hash"],)]


def test_audit_verifies_chain_in_chunks(tmp_path, monkeypatch):
    """In-process on a real DuckDB file: links across chunk boundaries are checked, each break once."""
    from linetap.agent.sink import audit as audit_mod
    from linetap.agent.sink.db import open_target
    from linetap.agent.sink.store import Store, parse_payload

    records, prev = [], GENESIS
    for seq in range(1, 8):
        rec = unit_record(seq, prev, f"SN-{seq}")
        records.append(rec)
        prev = rec["hash"]
    t = open_target(str(tmp_path / "chunks.duckdb"))
    try:
        t.migrate()
        Store(t).store([parse_payload(orjson.dumps(r)) for r in records])
        monkeypatch.setattr(audit_mod, "CHAIN_CHUNK", 2)
        assert all(sa.ok for sa in audit_mod.audit(t))
        # seq 5 re-hashed consistently on its own content but linked to a forged predecessor hash: the
        # link 4 -> 5 sits on a chunk boundary (chunks 1-2, 3-4, 5-6, 7)
        forged = unit_record(5, "f" * 64, "SN-5")
        t.execute("UPDATE units SET prev_hash = ?, hash = ? WHERE seq = 5", (forged["prev_hash"], forged["hash"]))
        breaks = [(sa.stream, cb["seq"]) for sa in audit_mod.audit(t) for cb in sa.chain_breaks]
        # 5's link to 4 is broken, and 6's link to 5 (6 carries the original hash of 5)
        assert breaks == [("units", 5), ("units", 6)], breaks
    finally:
        t.close()


@pytest.mark.timeout(90)
def test_sink_tls_and_credentials(pki, tmp_path):  # noqa: F811 (the fixture)
    """A TLS broker that wants a user name and password: the right ones subscribe, a wrong one is exit 3."""
    b = tls_broker_with_password(pki, tmp_path)
    b.start()
    try:
        (tmp_path / "pw").write_text("s3cret\n")
        db = str(tmp_path / "mes.duckdb")
        sink = SinkProc(b, db, tmp_path / "sink.log", "--username", "mes-sink", "--password-file",
                        str(tmp_path / "pw"), "--ca-file", str(pki["ca.pem"]))
        sink.stop()
        (tmp_path / "pw").write_text("wrong\n")
        r = linetap("sink", "--broker", f"{b.host}:{b.port}", "--db", db, "--username", "mes-sink",
                    "--password-file", str(tmp_path / "pw"), "--ca-file", str(pki["ca.pem"]), timeout=30)
        assert r.returncode == 3 and "refused the connection" in r.stderr, r.stderr
        r = linetap("sink", "--broker", f"{b.host}:{b.port}", "--db", db, "--username", "mes-sink",
                    "--password-file", str(tmp_path / "pw"), timeout=40)  # no --ca-file: plain MQTT to TLS
        assert r.returncode == 3 and "no MQTT answer (CONNACK)" in r.stderr and "--ca-file" in r.stderr, r.stderr
        r = linetap("sink", "--broker", f"{b.host}:{b.port}", "--db", db, "--password-file", str(tmp_path / "pw"))
        assert r.returncode == 2 and "needs --username" in r.stderr, r.stderr
    finally:
        b.stop()


@pytest.mark.timeout(120)
def test_postgres_restart_is_waited_out(postgres_server, broker, tmp_path):
    """The PostgreSQL server stopped under a running sink: the sink keeps running, acknowledges
    nothing it could not store, reconnects, and ends with every record."""
    db = postgres_server.new_database()
    recs, prev = [], GENESIS
    for seq in range(1, 21):
        recs.append(unit_record(seq, prev, f"SN-{seq}"))
        prev = recs[-1]["hash"]
    sink = SinkProc(broker, db, tmp_path / "sink.log")
    try:
        publish_all(broker, [(f"{ROOT}/sealer1/units", orjson.dumps(r)) for r in recs[:10]])
        time.sleep(1.0)
        postgres_server.pause()
        try:
            publish_all(broker, [(f"{ROOT}/sealer1/units", orjson.dumps(r)) for r in recs[10:]])
            time.sleep(2.0)
            assert sink.proc.poll() is None, f"the sink exited while the database was away:\n{sink.text()[-2000:]}"
        finally:
            postgres_server.resume()
        deadline = time.monotonic() + 20
        while query(db, "SELECT count(*) FROM units") != [(20,)]:
            assert time.monotonic() < deadline, f"records missing after the restart:\n{sink.text()[-2000:]}"
            time.sleep(0.2)
    finally:
        sink.stop()
    assert "sink lost the database" in sink.text() and "sink reconnected to the database" in sink.text()
    assert linetap("audit", "--db", db).returncode == 0


def test_audit_of_a_database_without_the_schema_is_exit_2(postgres_server, tmp_path):
    import duckdb

    duckdb.connect(str(tmp_path / "other.duckdb")).close()
    for db in (postgres_server.new_database(), str(tmp_path / "other.duckdb")):
        r = linetap("audit", "--db", db)
        assert r.returncode == 2 and "holds no linetap sink data" in r.stderr, r.stderr
        r = linetap("trace", "SN-1", "--db", db)
        assert r.returncode == 2 and "holds no linetap sink data" in r.stderr, r.stderr
