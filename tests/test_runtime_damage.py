"""Damage found while the agent runs (a records-file block that opening did not read): the agent
stops in order, keeps what it held in memory in a sidecar file and copies of the files, exit 3,
no traceback; `linetap status` finds the damage too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from agent_helpers import AGENT_ID, line_config, modbus_device, start_simulator_process

from linetap.buffers import DuckDBBuffer

LINETAP = str(Path(sys.executable).with_name("linetap"))


def _damaged_buffer(path: Path) -> None:
    """A buffer with 3000 unsent unit records, one block in the middle of the records file scribbled."""
    buf = DuckDBBuffer(path, AGENT_ID)
    units = [{"kind": "unit", "serial": f"SN-{i:06d}", "station": "sealer1", "started_at": i,
              "note": os.urandom(300).hex()} for i in range(3000)]  # random text: blocks DuckDB cannot squeeze
    for k in range(0, len(units), 500):
        buf.append_records([], units[k:k + 500])
    buf.close()
    records = path.with_name(path.name + ".records")
    data = bytearray(records.read_bytes())
    at = len(data) // 2 // 16384 * 16384 + 200
    data[at:at + 64] = os.urandom(64)
    records.write_bytes(bytes(data))


@pytest.mark.timeout(90)
def test_damage_found_at_run_time_stops_in_order(tmp_path, broker):
    folder = tmp_path / "line pc-1"
    folder.mkdir()
    buffer = folder / "heat-sealer-buffer.duckdb"
    _damaged_buffer(buffer)
    opened = DuckDBBuffer(buffer, AGENT_ID)  # opening alone does not read the damaged block
    assert opened.last_seq("units") == 3000
    opened.close()

    sim, port = start_simulator_process()
    try:
        cfg = line_config(tmp_path, broker, [modbus_device(port)],
                          buffer={"path": str(buffer)}, logging={"format": "json", "level": "info"})
        cfg_path = folder / "heat-sealer line.yaml"
        cfg_path.write_text(json.dumps(cfg.model_dump(mode="json", exclude_none=True)))
        # the forwarder reads the unsent unit records, and with them the damaged block
        r = subprocess.run([LINETAP, "run", str(cfg_path)], capture_output=True, text=True, timeout=60)
    finally:
        sim.send_signal(signal.SIGINT)
        sim.wait(10)
    assert r.returncode == 3, r.stderr[-3000:]
    assert "Traceback" not in r.stdout + r.stderr
    message = r.stderr.strip().splitlines()[-1]
    assert message.startswith("linetap: buffer") and "is damaged" in message and "Restore the buffer" in message

    copies = sorted(p.name.split(".corrupt-")[0] for p in folder.glob("*.corrupt-*"))
    assert buffer.name in copies and buffer.name + ".records" in copies, copies
    sidecars = list(folder.glob("heat-sealer-buffer.duckdb.unsaved-*.jsonl"))
    assert len(sidecars) == 1 and sidecars[0].name in message
    lines = [json.loads(line) for line in sidecars[0].read_text().splitlines()]
    assert all(doc["kind"] in ("chained_record", "event", "unit", "telemetry") for doc in lines)

    stopped = [json.loads(line) for line in r.stderr.splitlines()
               if line.startswith("{") and "buffer damaged while running" in line]
    assert len(stopped) == 1, r.stderr[-3000:]
    s = stopped[0]
    # nothing the agent read is lost: committed, or in the sidecar file
    assert s["samples_read"] == s["samples_committed"] + s["samples_in_sidecar"], s
    assert s["samples_in_sidecar"] == sum(len(d["tag"]) for d in lines if d["kind"] == "telemetry")
    assert s["records_in_sidecar"] == sum(d["kind"] != "telemetry" for d in lines)

    r = subprocess.run([LINETAP, "status", str(cfg_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 3 and "is damaged" in r.stderr, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
