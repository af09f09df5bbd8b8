"""Store-and-forward under faults: kill -9, broker absent at start, SIGTERM mid-drain, size cap, damage."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
from agent_helpers import (
    AGENT_ID,
    line_config,
    modbus_device,
    payloads,
    running_agent,
    start_simulator_process,
    telemetry_samples,
)
from fixtures_broker import MQTTCapture

from linetap.buffers import BufferCorrupt, DuckDBBuffer
from linetap.buffers.verify import verify
from linetap.config.loader import load_config
from linetap.drivers.samples import Quality, SampleBatch
from linetap.simulators import BULK_ADDRESS, ModbusStationServer, StationModel

ROOT = Path(__file__).parents[1]
CLI = [sys.executable, "-m", "linetap.agent.cli"]


def _station_line(tmp_path, broker, port: int, **sections):
    example = load_config(ROOT / "config/examples/heat-sealer-modbus.yaml")
    device = example.devices[0].model_dump(mode="json", exclude_none=True)
    device.update({"port": port, "poll_interval": "20ms", "timeout": "500ms"})
    station = example.stations[0].model_dump(mode="json", exclude_none=True)
    return line_config(tmp_path, broker, [device], stations=[station], **sections)


def _write_config(tmp_path, cfg) -> Path:
    path = tmp_path / "line.yaml"
    path.write_text(json.dumps(cfg.model_dump(mode="json", exclude_none=True)))
    return path


def _capture_file(capture, tmp_path) -> Path:
    out = tmp_path / "capture.jsonl"
    out.write_bytes(b"".join(m.payload + b"\n" for m in capture.messages
                             if m.topic.endswith(("/units", "/events", "/telemetry"))))
    return out


def _connected_per_status_file(status: Path, pid: int) -> bool:
    try:
        doc = json.loads(status.read_text())
    except (OSError, ValueError):
        return False
    return doc["pid"] == pid and all(d["state"] == "connected" for d in doc["devices"].values())


def test_kill_9_at_random_moments_loses_no_committed_record(tmp_path, broker, capture):
    sim, port = start_simulator_process("--speed", "8")
    rng = random.Random(1234)
    try:
        cfg = _station_line(tmp_path, broker, port)
        cfg_path = _write_config(tmp_path, cfg)
        status = Path(f"{cfg.buffer.path}.status.json")
        for _ in range(4):
            agent = subprocess.Popen([*CLI, "run", str(cfg_path)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 20
            while not _connected_per_status_file(status, agent.pid):  # up, whatever the start-up took
                assert time.monotonic() < deadline and agent.poll() is None, "the agent did not come up"
                time.sleep(0.05)
            time.sleep(rng.uniform(0.2, 1.5))
            agent.kill()  # SIGKILL: no flush, no goodbye
            agent.wait(10)
        agent = subprocess.Popen([*CLI, "run", str(cfg_path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(2.0)
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=30)
        assert agent.returncode == 0, err.decode()
    finally:
        sim.send_signal(signal.SIGINT)
        sim.wait(10)

    buf = DuckDBBuffer(cfg.buffer.path, AGENT_ID)
    committed = {s: buf.last_seq(s) for s in ("telemetry", "units", "events")}
    buf.close()
    assert committed["units"] > 0 and committed["telemetry"] > 0
    capture.wait_for(lambda m: max((s["seq"] for s in telemetry_samples(m)), default=0) >= committed["telemetry"],
                     timeout=15)
    report = verify([_capture_file(capture, tmp_path)])
    assert report.ok, [str(f) for f in report.findings]
    for stream, last in committed.items():
        counts = report.counts[f"{AGENT_ID}/{stream}"]
        assert (counts["first"], counts["last"], counts["unique"]) == (1, last, last), stream
    states = [p["body"]["state"] for p in payloads(capture.messages, "/events")
              if p["body"]["kind"] == "device_state"]
    assert states.count("connected") == 5  # one per agent start, each recorded


async def test_broker_absent_at_start_then_everything_flows(tmp_path, broker):
    broker.stop()
    model = StationModel(seed=3, cycle_time=0.5, idle_time=0.1)
    async with ModbusStationServer(model, port=0) as sim:
        cfg = line_config(tmp_path, broker, [modbus_device(sim.port, poll_interval="20ms")])
        async with running_agent(cfg) as agent:
            await asyncio.sleep(1.5)
            assert agent.stats.samples_buffered > 0
            assert not agent.forwarder.stats.connected
            broker.start()
            with MQTTCapture(broker.host, broker.port) as cap:
                # the agent's subscriber-side view starts now: the retained status and all data after it
                await cap.until(lambda m: any(s["seq"] == 1 for s in telemetry_samples(m)), timeout=15)
                n = agent.stats.samples_buffered
                await cap.until(lambda m: len({s["seq"] for s in telemetry_samples(m)}) >= n, timeout=15)


def test_sigterm_during_backlog_drain_stops_cleanly_and_resumes(tmp_path, broker, capture):
    # A slow drain (one message of 10 samples in flight) that the 2 s stop grace cannot finish.
    cfg = line_config(tmp_path, broker, [modbus_device(1, tags=[{"name": "x", "address": 0}])],
                      mqtt={"max_inflight": 1, "telemetry_batch": 10})
    buf = DuckDBBuffer(cfg.buffer.path, AGENT_ID)
    n = 20_000
    table = SampleBatch("backlog", [f"t{i % 100}" for i in range(n)], [float(i) for i in range(n)],
                        [Quality.GOOD] * n, [None] * n, 1).to_arrow()
    buf.append(pa.concat_tables([table] * 25))  # 500k samples waiting
    buf.close()
    cfg_path = _write_config(tmp_path, cfg)

    agent = subprocess.Popen([*CLI, "run", str(cfg_path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    capture.wait_for(lambda m: len(telemetry_samples(m)) > 2_000, timeout=20)
    agent.send_signal(signal.SIGTERM)
    _, err = agent.communicate(timeout=30)
    assert agent.returncode == 0 and b"Traceback" not in err, err.decode()
    buf = DuckDBBuffer(cfg.buffer.path, AGENT_ID)
    cursor = buf.cursor("mqtt", "telemetry")
    buf.close()
    assert 0 < cursor < 500_000, "stopped mid-drain with its cursor stored"
    assert cursor <= max(s["seq"] for s in telemetry_samples(capture.messages))

    fast = cfg.model_copy(update={"mqtt": cfg.mqtt.model_copy(update={"max_inflight": 32, "telemetry_batch": 500})})
    cfg_path = _write_config(tmp_path, fast)
    agent = subprocess.Popen([*CLI, "run", str(cfg_path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        capture.wait_for(lambda m: len({s["seq"] for s in telemetry_samples(m)}) >= 500_000, timeout=60)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.communicate(timeout=30)
    buf = DuckDBBuffer(cfg.buffer.path, AGENT_ID)
    last = buf.last_seq("telemetry")  # the backlog plus the unreachable device's bad samples
    buf.close()
    seqs = [s["seq"] for s in telemetry_samples(capture.messages)]
    assert sorted(set(seqs)) == list(range(1, last + 1))
    assert len(seqs) - last <= 100, "re-sent at most what was unacknowledged at the stop"


async def test_size_cap_during_outage_keeps_units_and_events_and_reports_every_drop(tmp_path, broker, capture):
    model = StationModel(seed=8, cycle_time=0.6, idle_time=0.1, out_of_limit_share=0.3, keep_units=1000)
    async with ModbusStationServer(model, port=0, speed=2.0) as sim:
        cfg = _station_line(tmp_path, broker, sim.port, buffer={"max_size": "3MB"})
        bulk = [{"name": f"b{i}", "address": BULK_ADDRESS + 2 * i, "type": "float32"} for i in range(500)]
        devices = [{**cfg.devices[0].model_dump(mode="json", exclude_none=True),
                    "tags": [*cfg.devices[0].model_dump(mode="json")["tags"], *bulk]}]
        doc = cfg.model_dump(mode="json", exclude_none=True)
        doc["devices"] = devices
        cfg = type(cfg).model_validate(doc)
        broker.stop()
        async with running_agent(cfg) as agent:
            await asyncio.sleep(8)  # ~25k samples/s offered into a 3 MB buffer
            assert agent.stats.units >= 3
            broker.start()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                stats = {s.stream: s for s in await agent.buffer.stats("mqtt")}
                if all(s.pending == 0 for s in stats.values()):
                    break
                await asyncio.sleep(0.2)
        buf = DuckDBBuffer(cfg.buffer.path, AGENT_ID)
        buffered_units, buffered_events, last_telemetry = (buf.last_seq(s) for s in ("units", "events", "telemetry"))
        buf.close()
        await capture.until(lambda m: len(payloads(m, "/units")) >= buffered_units, timeout=15)

    gaps = [p["body"] for p in payloads(capture.messages, "/events") if p["body"]["kind"] == "gap"]
    assert gaps, "the cap was reached"
    report = verify([_capture_file(capture, tmp_path)])
    assert report.ok, [str(f) for f in report.findings]  # every missing seq is covered by a gap event
    units = report.counts[f"{AGENT_ID}/units"]
    assert (units["first"], units["last"], units["unique"]) == (1, buffered_units, buffered_units)
    assert report.counts[f"{AGENT_ID}/events"]["unique"] == buffered_events
    delivered = {s["seq"] for s in telemetry_samples(capture.messages)}
    dropped = {q for g in gaps for q in range(g["seq_first"], g["seq_last"] + 1)}
    assert not delivered & dropped
    assert delivered | dropped == set(range(1, last_telemetry + 1)), "loss is exactly what the gaps say"


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_buffer_refuses_to_start_and_keeps_the_file(tmp_path, broker, damage):
    cfg = line_config(tmp_path, broker, [modbus_device(1, tags=[{"name": "x", "address": 0}])])
    buf = DuckDBBuffer(cfg.buffer.path, AGENT_ID)
    buf.append(SampleBatch("d", ["a"] * 1000, [1.0] * 1000, [0] * 1000, [None] * 1000, 1).to_arrow())
    buf.close()
    path = Path(cfg.buffer.path)
    data = path.read_bytes()
    path.write_bytes(b"\x00garbage" * 4096 if damage == "garbage" else data[: len(data) // 3])
    damaged = path.read_bytes()
    r = subprocess.run([*CLI, "run", str(_write_config(tmp_path, cfg))], capture_output=True, timeout=30)
    assert r.returncode == 3, r
    assert b"Traceback" not in r.stderr + r.stdout
    assert b"will not start over a damaged buffer" in r.stderr
    assert path.read_bytes() == damaged, "the damaged file is left as it was"
    assert list(path.parent.glob(path.name + ".corrupt-*")), "and a copy is kept aside"


@pytest.mark.parametrize("damage", ["truncate", "scribble"])
def test_damaged_wal_recovers_a_prefix_or_refuses(tmp_path, damage):
    """A power cut mid-write: the WAL's tail is cut or scribbled. The buffer either opens with an
    intact, non-empty prefix of what was committed (whole transactions, each row as written), or
    refuses with a clear error: never garbage, never empty."""
    path = tmp_path / "line 1" / "heat-sealer-buffer.duckdb"
    path.parent.mkdir()
    transactions, rows = 20, 1000
    script = (
        "import os, sys\n"
        "from linetap.buffers import DuckDBBuffer\n"
        "from linetap.drivers.samples import SampleBatch\n"
        f"b = DuckDBBuffer({str(path)!r}, 'a')\n"
        "b._con.execute('PRAGMA disable_checkpoint_on_shutdown').fetchall()\n"
        "b._con.execute(\"SET checkpoint_threshold = '1TB'\").fetchall()\n"
        f"for i in range({transactions}):\n"
        f"    b.append(SampleBatch('d', ['t'] * {rows}, [float(i)] * {rows}, [0] * {rows}, [None] * {rows},"
        " 1_000 + i).to_arrow())\n"
        "os._exit(0)  # no close, no checkpoint: everything is in the WAL\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    wal = path.with_name(path.name + ".wal")
    assert wal.exists() and wal.stat().st_size > 0
    data = bytearray(wal.read_bytes())
    if damage == "truncate":
        data = data[: len(data) * 2 // 3]
    else:
        mid = len(data) * 2 // 3
        data[mid:mid + 64] = b"\xff" * 64
    wal.write_bytes(bytes(data))
    try:
        buf = DuckDBBuffer(path, "a")
    except BufferCorrupt as err:
        assert "will not start over a damaged buffer" in str(err)
        return
    table = buf.read_telemetry(0, 100_000)
    last = buf.last_seq("telemetry")
    buf.close()
    # the damage is two thirds in: the transactions before it were committed and must be there
    assert rows <= last < transactions * rows, f"a non-empty prefix of the committed rows, got last seq {last}"
    assert last % rows == 0, "whole transactions only"
    assert table.column("seq").to_pylist() == list(range(1, last + 1)), "an intact prefix"
    i = [(seq - 1) // rows for seq in range(1, last + 1)]
    assert table.column("num").to_pylist() == [float(k) for k in i], "each row as it was written"
    assert table.column("agent_ts").to_pylist() == [1_000 + k for k in i]
    assert set(table.column("device").to_pylist()) == {"d"} and set(table.column("tag").to_pylist()) == {"t"}
