"""`linetap archive` + `linetap verify DIR`, against DuckDB and a real PostgreSQL: records landed by a
real `linetap sink` come out as Parquet per stream and month with a manifest that proves them; a
changed, missing or altered file is found; bad input is refused clearly."""

from __future__ import annotations

import json
import time

import orjson
import pyarrow.parquet as pq
import pytest
from sink_helpers import SinkProc, linetap, query
from test_sink_store import publish_all, sink_db  # noqa: F401 (sink_db: fixture, DuckDB and PostgreSQL)

from linetap.buffers.integrity import GENESIS, record_hash

AGENT = "line-4-cartoner"
ROOT = "acme/cork/packaging/line4"
NOV, DEC = 1_793_491_200_000_000, 1_796_083_200_000_000  # 2026-11-01, 2026-12-01 (UTC), us


def records(stream: str, times: list[int]) -> list[dict]:
    out, prev = [], GENESIS
    for seq, recorded_at in enumerate(times, start=1):
        body = ({"kind": "unit", "serial": f"SN-{seq:05d}", "station": "cartoner", "verdict": "pass",
                 "parameters": [{"name": "glue_temperature", "value": 161.0 + seq, "unit": "degC"}]}
                if stream == "units" else {"kind": "nonconformance", "ts": recorded_at, "serial": f"SN-{seq:05d}"})
        rid = f"{AGENT}/{stream}/{seq}"
        h = record_hash(prev, id=rid, stream=stream, seq=seq, recorded_at=recorded_at, body=body)
        out.append({"schema": f"linetap.{stream[:-1]}/2", "id": rid, "agent": AGENT, "stream": stream, "seq": seq,
                    "sent_at": recorded_at + 5, "recorded_at": recorded_at, "prev_hash": prev, "hash": h,
                    "body": body})
        prev = h
    return out


def telemetry(seq: int, agent_ts: int, n: int = 4) -> dict:
    return {"schema": "linetap.telemetry/2", "id": f"{AGENT}/telemetry/{seq}-{seq + n - 1}", "agent": AGENT,
            "stream": "telemetry", "seq": seq, "seq_last": seq + n - 1, "count": n, "sent_at": 1,
            "device": "cartoner-plc", "station": "cartoner",
            "samples": {"tag": ["glue.temp"] * n, "value": [160.5, 161, True, "NaN"][:n], "quality": ["good"] * n,
                        "reason": [None] * n, "source_ts": [None] * n, "agent_ts": [agent_ts + i for i in range(n)]}}


@pytest.fixture
def landed(sink_db, broker, tmp_path):  # noqa: F811
    units = records("units", [NOV + 3_600_000_000, NOV + 7_200_000_000, DEC + 60_000_000, DEC + 120_000_000])
    events = records("events", [NOV + 3_600_000_000, DEC + 60_000_000])
    sink = SinkProc(broker, sink_db, tmp_path / "sink.log")
    try:
        publish_all(broker, [(f"{ROOT}/cartoner/units", orjson.dumps(u)) for u in units]
                    + [(f"{ROOT}/cartoner/events", orjson.dumps(e)) for e in events]
                    + [(f"{ROOT}/cartoner/telemetry", orjson.dumps(telemetry(1, NOV + 10))),
                       (f"{ROOT}/cartoner/telemetry", orjson.dumps(telemetry(5, DEC + 10)))])
        time.sleep(1.5)  # as test_sink_store: a DuckDB file cannot be read while the sink holds it
    finally:
        sink.stop()
    return sink_db, units, events


def test_archive_and_verify_round_trip(landed, tmp_path):
    db, units, events = landed
    out = tmp_path / "archive 2026" / "line 4"
    r = linetap("archive", "--db", db, "--before", "2027-01-01", "--out", str(out))
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "linetap.archive/1"
    files = {f["file"]: f for f in manifest["files"]}
    assert set(files) == {f"{s}-2026-{m}.parquet" for s in ("units", "events", "telemetry") for m in ("11", "12")}
    nov_units = files["units-2026-11.parquet"]["agents"][AGENT]
    assert nov_units == {"rows": 2, "seq_first": 1, "seq_last": 2, "first_prev_hash": GENESIS,
                         "last_hash": units[1]["hash"]}
    assert files["units-2026-12.parquet"]["agents"][AGENT]["first_prev_hash"] == units[1]["hash"]
    assert files["telemetry-2026-12.parquet"]["agents"][AGENT] == {"rows": 4, "seq_first": 5, "seq_last": 8}
    table = pq.read_table(out / "units-2026-12.parquet")
    assert table.column("serial").to_pylist() == ["SN-00003", "SN-00004"]
    assert [orjson.loads(b) for b in table.column("body").to_pylist()] == [u["body"] for u in units[2:]]
    assert pq.read_table(out / "telemetry-2026-11.parquet").column("value").to_pylist() == \
        ["160.5", "161", "true", '"NaN"']

    r = linetap("verify", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "units: 4 rows" in r.stdout and "OK: every file as its manifest says" in r.stdout

    # only what was recorded before the date; and a folder that holds an archive is not overwritten
    nov_only = tmp_path / "archive-nov"
    r = linetap("archive", "--db", db, "--before", "2026-12-01", "--out", str(nov_only))
    assert r.returncode == 0, r.stderr
    assert sorted(f["file"] for f in json.loads((nov_only / "manifest.json").read_text())["files"]) == [
        "events-2026-11.parquet", "telemetry-2026-11.parquet", "units-2026-11.parquet"]
    r = linetap("archive", "--db", db, "--before", "2026-12-01", "--out", str(nov_only))
    assert r.returncode == 3 and "already holds an archive" in r.stderr


def test_verify_finds_a_changed_a_missing_file_and_an_altered_record(landed, tmp_path):
    db, units, _ = landed
    out = tmp_path / "line 4 archive"
    assert linetap("archive", "--db", db, "--before", "2027-01-01", "--out", str(out)).returncode == 0
    victim = out / "units-2026-11.parquet"
    original = victim.read_bytes()
    victim.write_bytes(original[:-10] + b"\0" * 10)
    (out / "events-2026-12.parquet").unlink()
    r = linetap("verify", str(out))
    assert r.returncode == 1
    assert "units-2026-11.parquet: SHA-256 differs from the manifest" in r.stdout, r.stdout
    assert "events-2026-12.parquet: missing" in r.stdout, r.stdout

    # a row altered in the database before archiving: the file matches its manifest, the chain does not
    body = {**units[2]["body"], "verdict": "fail"}
    query(db, "UPDATE units SET body = ? WHERE seq = 3", (orjson.dumps(body).decode(),))
    out2 = tmp_path / "line 4 archive altered"
    assert linetap("archive", "--db", db, "--before", "2027-01-01", "--out", str(out2)).returncode == 0
    r = linetap("verify", str(out2))
    assert r.returncode == 1 and "units-2026-12.parquet" in r.stdout and "seq 3" in r.stdout, r.stdout


def test_archive_refuses_bad_input(tmp_path):
    db = str(tmp_path / "mes sink.duckdb")
    r = linetap("archive", "--db", db, "--before", "last tuesday", "--out", str(tmp_path / "a"))
    assert r.returncode == 2 and "not a date" in r.stderr
    r = linetap("archive", "--db", "mysql://mes", "--before", "2026-01-01", "--out", str(tmp_path / "a"))
    assert r.returncode == 2, r.stderr
    (tmp_path / "not-an-archive").mkdir()
    (tmp_path / "not-an-archive" / "manifest.json").write_text("{}")
    r = linetap("verify", str(tmp_path / "not-an-archive"))
    assert r.returncode == 1 and "format None" in r.stdout, r.stdout + r.stderr
