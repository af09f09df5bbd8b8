"""A full disk is an operating state: the agent keeps running, says so, holds what it must, and
every telemetry loss is a gap event.

The buffer lives on a small tmpfs that the test fills during production (with the broker up, and
during a broker outage). Mounting needs root (CI runs as root); without it the test is skipped
with the reason printed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from agent_helpers import AGENT_ID, line_config, modbus_device, payloads, start_simulator_process
from fixtures_broker import MQTTCapture

from linetap.config.loader import load_config

ROOT = Path(__file__).parents[1]
LINETAP = str(Path(sys.executable).with_name("linetap"))


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MB tmpfs at `…/line pc-1/buffer disk`."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs (CI runs as root)")
    mount = tmp_path / "line pc-1" / "buffer disk"
    mount.mkdir(parents=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> Path:
    """Take every free byte of the file system."""
    filler = folder / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (1 << 20, 65536, 4096, 512, 1):
            block = b"\0" * size
            try:
                while True:
                    os.write(fd, block)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def _connected(status: Path) -> bool:
    try:
        doc = json.loads(status.read_text())
    except (OSError, ValueError):
        return False
    return all(d["state"] == "connected" for d in doc["devices"].values()) and (doc.get("mqtt") or {}).get("connected")


def _linetap(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    r = subprocess.run([LINETAP, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    return r


@pytest.mark.timeout(150)
@pytest.mark.parametrize("broker_state", ["broker up", "broker down"])
def test_disk_full_during_production(tmp_path, small_disk, broker, broker_state):
    sim, port = start_simulator_process("--speed", "2")
    example = load_config(ROOT / "config/examples/heat-sealer-modbus.yaml")
    station = example.stations[0].model_dump(mode="json", exclude_none=True)
    device = modbus_device(port, tags=[t.model_dump(mode="json", exclude_none=True) for t in example.devices[0].tags],
                           poll_interval="20ms")
    cfg = line_config(tmp_path, broker, [device], stations=[station],
                      buffer={"path": str(small_disk / "heat-sealer-buffer.duckdb"), "flush_interval": "50ms",
                              "hold_samples": 2000},
                      logging={"format": "json", "level": "info"})
    cfg_path = small_disk.parent / "heat-sealer line.yaml"
    cfg_path.write_text(json.dumps(cfg.model_dump(mode="json", exclude_none=True)))
    status = small_disk / "heat-sealer-buffer.duckdb.status.json"
    capture = MQTTCapture(broker.host, broker.port, client_id="mes-disk-full", clean=False).start()
    agent = subprocess.Popen([LINETAP, "run", str(cfg_path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not _connected(status):
            assert agent.poll() is None and time.monotonic() < deadline, "the agent did not come up"
            time.sleep(0.1)
        time.sleep(2)
        if broker_state == "broker down":
            broker.stop()
        filler = fill(small_disk)
        full_since = time.time()
        if broker_state == "broker up":  # the alarm reaches the MES although it cannot be committed
            capture.wait_for(lambda ms: any(p["body"].get("alarm") == "disk_full" for p in payloads(ms, "/events")),
                             timeout=15)
        time.sleep(8)  # production goes on: units finish, telemetry is held, then dropped
        assert agent.poll() is None, "the agent stays up on a full disk:\n" + agent.stderr.read().decode()[-6000:]
        filler.unlink()
        if broker_state == "broker down":
            broker.start()
        time.sleep(6)
        assert agent.poll() is None
    finally:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=30)
        sim.send_signal(signal.SIGINT)
        sim.wait(10)
    log = err.decode()
    assert agent.returncode == 0, log[-3000:]
    assert "Traceback" not in log
    errors = [json.loads(line) for line in log.splitlines() if line.startswith("{") and '"error"' in line]
    assert any(e["event"] == "buffer cannot be written" and e["cause"] == "disk_full" for e in errors), log[-3000:]

    events = {}
    for p in payloads(capture.messages, "/events"):
        events[p["seq"]] = p["body"]
    alarms = [b for b in events.values() if b.get("alarm") == "disk_full"]
    assert alarms and alarms[0]["free_bytes"] is not None and "holding" in alarms[0]["doing"], alarms
    assert any(b.get("state") == "cleared" for b in alarms), "the MES hears that the disk is writable again"
    # ... and every event and unit record arrived, the ones made while the disk was full included
    export = tmp_path / "events export.jsonl"
    for stream in ("events", "units", "telemetry"):
        r = _linetap("export", str(cfg_path), "--stream", stream, "-o", str(tmp_path / f"{stream} export.jsonl"),
                     cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    stored_events = [json.loads(line) for line in export.read_text().splitlines()]
    assert sorted(events) == [e["seq"] for e in stored_events], "every committed event reached the MES"
    units = {p["seq"]: p["body"] for p in payloads(capture.messages, "/units")}
    stored_units = [json.loads(line) for line in (tmp_path / "units export.jsonl").read_text().splitlines()]
    assert sorted(units) == [u["seq"] for u in stored_units]
    made_while_full = [u for u in stored_units if u["body"]["ended_at"] > full_since * 1e6]
    assert made_while_full, "units went on being recorded while the disk was full"
    serials = [int(u["body"]["serial"].split("-")[1]) for u in stored_units]
    assert serials == list(range(serials[0], serials[0] + len(serials))), (
        f"no unit is missing: {serials}\n" + "\n".join(map(str, events.values())) + "\n" + "\n".join(
            str({k: u["body"][k] for k in ("serial", "started_at", "ended_at", "verdict", "reasons")})
            for u in stored_units))

    # the telemetry loss is exactly what the gap events say
    gaps = [b for b in events.values() if b["kind"] == "gap"]
    assert gaps and all(g["cause"] == "disk_full" for g in gaps), gaps
    delivered = set()
    for line in (tmp_path / "telemetry export.jsonl").read_text().splitlines():
        m = json.loads(line)
        delivered.update(range(m["seq"], m["seq_last"] + 1))
    dropped = set()
    for g in gaps:
        covered = set(range(g["seq_first"], g["seq_last"] + 1))
        assert len(covered) == g["count"] and not covered & delivered and not covered & dropped
        dropped |= covered
    assert delivered | dropped == set(range(1, max(delivered | dropped) + 1)), "no silent hole in the seqs"
    r = _linetap("verify", *(str(tmp_path / f"{s} export.jsonl") for s in ("events", "units", "telemetry")),
                 cwd=tmp_path)
    assert r.returncode == 0, r.stdout
    assert AGENT_ID in stored_units[0]["id"]
