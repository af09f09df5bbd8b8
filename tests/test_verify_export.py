"""`linetap export` and `linetap verify`: a clean export verifies; tampering is found and located."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pyarrow.parquet as pq
import pytest

from linetap.agent.records import Event, Quality, SampleBatch
from linetap.agent.verify import verify
from linetap.buffers import DuckDBBuffer
from linetap.config.models import LineConfig

AGENT = "verify-line"


@pytest.fixture
def line(tmp_path):
    cfg_doc = {
        "agent": {"id": AGENT, "enterprise": "e", "site": "s", "area": "a", "line": "l"},
        "buffer": {"path": str(tmp_path / "buf.duckdb")},
        "mqtt": {"telemetry_batch": 7},
        "devices": [{"protocol": "modbus", "name": "plc1", "host": "h", "addressing": "zero_based",
                     "tags": [{"name": "t", "address": 0}]}],
    }
    cfg_path = tmp_path / "line.yaml"
    cfg_path.write_text(orjson.dumps(cfg_doc).decode())
    cfg = LineConfig.model_validate(cfg_doc)
    buf = DuckDBBuffer(cfg.buffer.path, AGENT)
    for i in range(5):
        n = 10
        buf.append(SampleBatch("plc1", [f"t{k}" for k in range(n)], [float(i * n + k) for k in range(n)],
                               [Quality.GOOD] * n, [None] * n, 1_000 + i).to_arrow(),
                   events=[Event("device_state", i, "plc1", "plc1", {"state": f"s{i}"})],
                   units=[{"serial": f"SN-{i}", "verdict": "pass", "station": "plc1"}])
    buf.close()
    return cfg_path, tmp_path


def _export(cfg_path, stream, out, *extra):
    r = subprocess.run([sys.executable, "-m", "linetap.agent.cli", "export", str(cfg_path), "--stream", stream,
                        "--output", str(out), *extra], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r


def _verify_cli(*files):
    return subprocess.run([sys.executable, "-m", "linetap.agent.cli", "verify", *map(str, files)],
                          capture_output=True, text=True, timeout=60)


def test_clean_export_verifies(line):
    cfg_path, tmp = line
    for stream in ("units", "events", "telemetry"):
        _export(cfg_path, stream, tmp / f"{stream}.jsonl")
    r = _verify_cli(*(tmp / f"{s}.jsonl" for s in ("units", "events", "telemetry")))
    assert r.returncode == 0, r.stdout
    assert "OK" in r.stdout
    assert f"{AGENT}/telemetry: 50 records (seq 1..50)" in r.stdout


def test_altered_removed_and_swapped_records_are_found(line):
    cfg_path, tmp = line
    src = tmp / "units.jsonl"
    _export(cfg_path, "units", src)
    rows = src.read_bytes().splitlines()
    assert len(rows) == 5

    altered = list(rows)
    doc = orjson.loads(altered[2])
    doc["body"]["verdict"] = "fail"
    altered[2] = orjson.dumps(doc)
    (tmp / "altered.jsonl").write_bytes(b"\n".join(altered) + b"\n")
    report = verify([tmp / "altered.jsonl"])
    assert [(f.kind, f.where.rsplit(":", 1)[1]) for f in report.findings] == [("broken_chain", "3")]
    assert "seq 3" in report.findings[0].detail

    removed = rows[:1] + rows[2:]
    (tmp / "removed.jsonl").write_bytes(b"\n".join(removed) + b"\n")
    kinds = {f.kind for f in verify([tmp / "removed.jsonl"]).findings}
    assert "missing" in kinds

    swapped = [rows[0], rows[2], rows[1], rows[3], rows[4]]
    (tmp / "swapped.jsonl").write_bytes(b"\n".join(swapped) + b"\n")
    report = verify([tmp / "swapped.jsonl"])
    assert [f.kind for f in report.findings] == ["out_of_order"]
    assert report.findings[0].where.endswith(":3")

    r = _verify_cli(tmp / "altered.jsonl")
    assert r.returncode == 1 and "broken_chain" in r.stdout and "FAILED" in r.stdout


def test_duplicates_are_fine_when_identical_and_found_when_not(line):
    cfg_path, tmp = line
    src = tmp / "telemetry.jsonl"
    _export(cfg_path, "telemetry", src)
    rows = src.read_bytes().splitlines()
    (tmp / "dup.jsonl").write_bytes(b"\n".join(rows + rows[:2]) + b"\n")
    report = verify([tmp / "dup.jsonl"])
    assert report.ok and report.counts[f"{AGENT}/telemetry"]["duplicates"] > 0

    doc = orjson.loads(rows[0])
    doc["samples"]["value"][0] = -1.0
    (tmp / "dupdiff.jsonl").write_bytes(b"\n".join([*rows, orjson.dumps(doc)]) + b"\n")
    assert [f.kind for f in verify([tmp / "dupdiff.jsonl"]).findings] == ["duplicate_differs"]

    (tmp / "hole.jsonl").write_bytes(b"\n".join(rows[:1] + rows[2:]) + b"\n")
    [finding] = verify([tmp / "hole.jsonl"]).findings
    assert finding.kind == "missing" and "seq 8..14" in finding.detail


def test_export_ranges_and_formats(line):
    cfg_path, tmp = line
    _export(cfg_path, "telemetry", tmp / "t.parquet", "--format", "parquet", "--from-seq", "11", "--to-seq", "20")
    table = pq.read_table(tmp / "t.parquet")
    assert table.column("seq").to_pylist() == list(range(11, 21))
    _export(cfg_path, "events", tmp / "e.csv", "--format", "csv")
    assert len((tmp / "e.csv").read_text().strip().splitlines()) == 6  # header + 5
    r = subprocess.run([sys.executable, "-m", "linetap.agent.cli", "export", str(cfg_path), "--stream", "nope"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_replay_resends_a_range_with_the_same_ids(line, broker, capture):
    cfg_path, tmp = line
    doc = orjson.loads(cfg_path.read_bytes())
    doc["mqtt"].update({"host": broker.host, "port": broker.port})
    cfg_path.write_bytes(orjson.dumps(doc))
    r = subprocess.run([sys.executable, "-m", "linetap.agent.cli", "replay", str(cfg_path), "--stream", "units",
                        "--from-seq", "2", "--to-seq", "4"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    got = capture.wait_for(lambda m: len([x for x in m if x.topic.endswith("/units")]) >= 3, timeout=10)
    units = [orjson.loads(m.payload) for m in got if m.topic.endswith("/units")]
    assert [u["id"] for u in units] == [f"{AGENT}/units/{i}" for i in (2, 3, 4)]
    _export(cfg_path, "units", tmp / "units.jsonl")
    exported = {orjson.loads(x)["seq"]: orjson.loads(x) for x in (tmp / "units.jsonl").read_bytes().splitlines()}
    for u in units:
        assert {k: v for k, v in u.items() if k != "sent_at"} == \
            {k: v for k, v in exported[u["seq"]].items() if k != "sent_at"}
    r = subprocess.run([sys.executable, "-m", "linetap.agent.cli", "replay", str(cfg_path), "--stream", "telemetry",
                        "--from-seq", "8"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "re-sent 43 telemetry records" in r.stdout, r.stderr


def test_status_reads_the_buffer_when_the_agent_is_not_running(line):
    cfg_path, tmp = line
    r = subprocess.run([sys.executable, "-m", "linetap.agent.cli", "status", str(cfg_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "agent not running" in r.stdout
    rows = {line.split()[0]: line.split()[1:] for line in r.stdout.splitlines()[2:5]}
    assert rows["telemetry"][:3] == ["50", "0", "50"]  # last seq, cursor, unsent
    assert rows["units"][:3] == ["5", "0", "5"]
