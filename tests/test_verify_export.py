"""`linetap export` and `linetap verify`: a clean export verifies; tampering is found and located."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from linetap.buffers import DuckDBBuffer
from linetap.buffers.records import Event
from linetap.buffers.verify import verify
from linetap.config.models import LineConfig
from linetap.drivers.samples import Quality, SampleBatch

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
    assert finding.kind == "missing" and "seq 8..10" in finding.detail  # buckets of 7; a new poll at seq 11


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
    # against the records as the buffer holds them (not against export: replay and export share a builder)
    buf = DuckDBBuffer(tmp / "buf.duckdb", AGENT)
    try:
        stored = {r.seq: r for r in buf.read_records("units", 0, 100)}
        rows = buf.read_telemetry(7, 1000).to_pylist()
    finally:
        buf.close()
    for u in units:
        r = stored[u["seq"]]
        assert (u["recorded_at"], u["prev_hash"], u["hash"], u["body"]) == (r.recorded_at, r.prev_hash, r.hash, r.body)
        assert u["schema"] == "linetap.unit/2" and u["agent"] == AGENT and u["stream"] == "units"
    capture.clear()
    r = subprocess.run([sys.executable, "-m", "linetap.agent.cli", "replay", str(cfg_path), "--stream", "telemetry",
                        "--from-seq", "8"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "re-sent 43 telemetry records" in r.stdout, r.stderr
    got = capture.wait_for(lambda m: sum(orjson.loads(x.payload)["count"] for x in m
                                         if x.topic.endswith("/telemetry")) >= 43, timeout=10)
    samples = []
    for m in got:
        if m.topic.endswith("/telemetry"):
            d = orjson.loads(m.payload)
            samples += [(d["seq"] + i, d["device"], d["samples"]["tag"][i], d["samples"]["value"][i],
                         d["samples"]["agent_ts"][i]) for i in range(d["count"])]
    assert samples == [(x["seq"], x["device"], x["tag"], x["num"], x["agent_ts"]) for x in rows], \
        "the replayed samples are the buffer's rows 8..50"


def test_status_reads_the_buffer_when_the_agent_is_not_running(line):
    cfg_path, tmp = line
    r = subprocess.run([sys.executable, "-m", "linetap.agent.cli", "status", str(cfg_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "agent not running" in r.stdout
    rows = {line.split()[0]: line.split()[1:] for line in r.stdout.splitlines()[2:5]}
    assert rows["telemetry"][:3] == ["50", "0", "50"]  # last seq, cursor, unsent
    assert rows["units"][:3] == ["5", "0", "5"]


# --- replay rebuilds the forwarder's telemetry messages ----------------------------------------

BATCH = 300  # does not divide the forwarder's 20,000-row reads nor export's 50,000-row chunks
BULK_TAGS, STATION_TAGS = 1000, 12


def poll(device: str, tags: int, ts: int, k: int) -> SampleBatch:
    """One poll of a device, as the drivers make it: one agent_ts, a bad sample now and then."""
    bad = [(k + i) % 97 == 0 for i in range(tags)]
    return SampleBatch(device, [f"{device}.t{i:04d}" for i in range(tags)],
                       [None if b else (f"SN-{k:06d}" if i == 0 else float(k * tags + i) / 8) for i, b in enumerate(bad)],
                       [Quality.BAD if b else Quality.GOOD for b in bad],
                       ["timeout" if b else None for b in bad], ts, [ts - 1_000 + i for i in range(tags)])


def commit(k: int, polls_per_commit: int = 5) -> pa.Table:
    """What the telemetry writer commits in one transaction: several whole polls of both devices."""
    batches = []
    for j in range(polls_per_commit):
        ts = 1_700_000_000_000_000 + (k * polls_per_commit + j) * 200_000
        batches.append(poll("heat-sealer-bulk", BULK_TAGS, ts, k * 10 + j))
        batches += [poll("heat-sealer-1", STATION_TAGS, ts + 20_000 * (s + 1), k * 10 + j) for s in range(4)]
    return pa.concat_tables([b.to_arrow() for b in batches])


def telemetry_messages(msgs) -> list[tuple[str, dict]]:
    """(topic, payload without sent_at) of each telemetry message, first delivery of each id, in
    seq order; a duplicate must be identical to its first delivery."""
    first: dict[str, tuple[str, dict]] = {}
    for m in msgs:
        if not m.topic.endswith("/telemetry"):
            continue
        d = orjson.loads(m.payload)
        content = (m.topic, {k: v for k, v in d.items() if k != "sent_at"})
        assert first.setdefault(d["id"], content) == content, f"{d['id']} differs between deliveries"
    return sorted(first.values(), key=lambda tc: tc[1]["seq"])


async def test_replay_and_export_rebuild_the_forwarders_telemetry_messages(tmp_path, broker):
    """The forwarder reads 20,000 rows at a time and, at the live head, whatever is committed; export
    and replay read 50,000. A capture of what the forwarder published and a capture of `linetap
    replay` (the console script) of the same range hold the same message ids with the same content."""
    from fixtures_broker import MQTTCapture

    from linetap.agent.forwarder import MQTTForwarder
    from linetap.buffers import AsyncBuffer

    folder = tmp_path / "line 1"
    folder.mkdir()
    doc = {
        "agent": {"id": AGENT, "enterprise": "acme", "site": "cork", "area": "packaging", "line": "line-1"},
        "buffer": {"path": str(folder / "heat-sealer-buffer.duckdb")},
        "mqtt": {"host": broker.host, "port": broker.port, "telemetry_batch": BATCH, "keepalive": "5s",
                 "reconnect_min": "100ms", "reconnect_max": "1s"},
        "logging": {"format": "console", "level": "warning"},
        "devices": [{"protocol": "modbus", "name": name, "host": "127.0.0.1", "addressing": "zero_based",
                     "tags": [{"name": "t", "address": 0}]} for name in ("heat-sealer-1", "heat-sealer-bulk")],
    }
    cfg_path = folder / "line-1 config.yaml"
    cfg_path.write_text(orjson.dumps(doc).decode())
    cfg = LineConfig.model_validate(doc)
    root = cfg.topic_root

    fwd_capture = MQTTCapture(broker.host, broker.port, (f"{root}/+/telemetry",)).start()
    buf = await AsyncBuffer.open(cfg.buffer.path, AGENT)
    try:
        for k in range(25):  # a backlog of ~131k rows: the forwarder reads it in 20,000-row chunks
            await buf.append(telemetry=commit(k))
        backlog = await buf.last_seq("telemetry")
        fwd = MQTTForwarder(cfg, buf)
        assert fwd.chunk_rows % BATCH and backlog > 3 * fwd.chunk_rows
        task = asyncio.create_task(fwd.run())
        try:
            await fwd_capture.until(lambda m: telemetry_messages(m) and
                                    telemetry_messages(m)[-1][1]["seq_last"] == backlog, timeout=60)
            # the live head: one commit at a time, each delivered before the next, so the forwarder's
            # reads end where the commits end: mid-bucket, within one device's run of rows (a line
            # whose bulk device is gone: 1..3 polls of 12 station tags per commit)
            for k in range(25, 65):
                ts = 1_800_000_000_000_000 + k * 200_000
                polls = [poll("heat-sealer-1", STATION_TAGS, ts + j * 20_000, k * 10 + j) for j in range(1 + k % 3)]
                await buf.append(telemetry=pa.concat_tables([p.to_arrow() for p in polls]))
                fwd.notify()
                head = await buf.last_seq("telemetry")
                await fwd_capture.until(lambda m, h=head: telemetry_messages(m)[-1][1]["seq_last"] == h, timeout=20)
        finally:
            task.cancel()
            await asyncio.wait({task}, timeout=10)
        last = await buf.last_seq("telemetry")
    finally:
        await buf.close()
        fwd_capture.close()
    forwarded = telemetry_messages(fwd_capture.messages)
    assert forwarded[-1][1]["seq_last"] == last

    linetap = Path(sys.executable).with_name("linetap")  # the installed console script
    with MQTTCapture(broker.host, broker.port, (f"{root}/+/telemetry",)) as replay_capture:
        r = subprocess.run([str(linetap), "replay", str(cfg_path), "--stream", "telemetry", "--from-seq", "1"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert f"re-sent {last} telemetry records" in r.stdout, r.stdout
        replay_capture.wait_for(lambda m: sum(1 for x in m if x.topic.endswith("/telemetry")) >= len(forwarded),
                                timeout=30)
        replayed = telemetry_messages(replay_capture.messages)
    export_file = tmp_path / "line 1" / "telemetry export.jsonl"
    r = subprocess.run([str(linetap), "export", str(cfg_path), "--stream", "telemetry", "--output", str(export_file)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    exported = [{k: v for k, v in orjson.loads(x).items() if k != "sent_at"}
                for x in export_file.read_bytes().splitlines()]

    ids = [c["id"] for _t, c in forwarded]
    assert [c["id"] for _t, c in replayed] == ids, "replay rebuilds the forwarder's message ids"
    assert replayed == forwarded, "and their topics and content, sent_at apart"
    assert exported == [c for _t, c in forwarded], "export too"
    # what the test covers: reads cut mid-bucket at 20,000-row edges and at the live head
    ends = {c["seq_last"] for _t, c in forwarded}
    assert any(e % BATCH and e > backlog for e in ends), "head-cut messages"
    assert len({c["device"] for _t, c in forwarded if c["seq"] > backlog}) == 1
    assert sum(c["count"] for _t, c in forwarded) == last
