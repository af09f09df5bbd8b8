"""The benchmark harness cannot rot: its smoke mode runs (a few seconds) and prints its tables.
It writes only where it is told (a temporary folder here), never into the source tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
_SCRATCH = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", "node-red"}


def source_tree() -> dict[str, tuple[int, int]]:
    """Every file of the worktree (except caches and the venv): path -> (size, mtime)."""
    files = {}
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in _SCRATCH and not d.endswith(".egg-info")]
        for name in filenames:
            st = os.stat(os.path.join(dirpath, name))
            files[os.path.relpath(os.path.join(dirpath, name), ROOT)] = (st.st_size, st.st_mtime_ns)
    return files


@pytest.mark.timeout(180)
def test_benchmark_smoke_mode_runs(tmp_path):
    work, results = tmp_path / "bench work", tmp_path / "bench results" / "smoke-run.json"
    before = source_tree()
    r = subprocess.run([sys.executable, "-m", "benchmarks.run", "--smoke", "--workdir", str(work),
                        "--results", str(results)], capture_output=True, text=True, timeout=170, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for heading in ("End to end", "Latency", "Buffer append", "Backlog drain"):
        assert heading in r.stdout, heading
    data = json.loads(results.read_text())
    assert {x["kind"] for x in data["results"]} >= {"modbus", "opcua", "append", "drain"}
    after = source_tree()
    assert after == before, f"the smoke run wrote into the source tree: {sorted(set(after.items()) ^ set(before.items()))}"


def test_modbus_decode_benchmark_runs():
    """The reply-path micro-benchmark the README quotes still runs against this pymodbus, as documented."""
    r = subprocess.run([sys.executable, "-m", "benchmarks.modbus_decode", "500"], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "pymodbus ReadHoldingRegistersResponse: reply" in r.stdout
    assert "linetap HoldingRegisterBytes: reply" in r.stdout and "linetap / pymodbus reply path:" in r.stdout


@pytest.mark.timeout(240)
def test_sink_benchmark_smoke_runs(tmp_path):
    """`--only sink --smoke`: sink runs into a private PostgreSQL (and DuckDB) and the trace timing on a
    small year, every row landed, both tables printed (behaviour only: no speed is asserted)."""
    from fixtures_postgres import _require, find_pg_bin

    if find_pg_bin() is None:
        if _require():
            pytest.fail("LINETAP_REQUIRE_POSTGRES=1 but no PostgreSQL binaries (initdb, pg_ctl) found: "
                        "apt-get install postgresql")
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin or on PATH: "
                    "apt-get install postgresql to run the sink benchmark's smoke test")
    work, results = tmp_path / "sink bench", tmp_path / "results" / "sink.json"
    before = source_tree()
    r = subprocess.run([sys.executable, "-m", "benchmarks.run", "--only", "sink", "--smoke", "--units", "1000",
                        "--serials", "50", "--workdir", str(work), "--results", str(results)],
                       capture_output=True, text=True, timeout=230, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "### Sink: agent payloads" in r.stdout and "### trace latency" in r.stdout, r.stdout[-3000:]
    assert "vs 200k samples/s per sink" in r.stdout and "p99 vs 200 ms goal" in r.stdout
    data = json.loads(results.read_text())
    sink = {x["name"]: x["values"] for x in data["results"] if x["kind"] == "sink"}
    assert {"pg-telemetry-1", "pg-telemetry-2", "pg-units-1", "pg-units-2"} <= set(sink)
    assert all(v["complete"] and v["held"] == v["rows"] for v in sink.values()), sink
    (tr,) = [x["values"] for x in data["results"] if x["kind"] == "trace"]
    assert tr["units"] == 1000 and tr["serials"] == 50 and tr["unverified"] == 0 and tr["units_seen"] >= 50
    assert all(rc == 0 for rc in tr["cli_rc"])
    assert source_tree() == before, "the sink smoke run wrote into the source tree"


@pytest.mark.timeout(120)
def test_deadband_benchmark_smoke_runs(tmp_path):
    """`--only deadband --smoke`: both variants measured; the deadband stores and sends less, and rides out longer."""
    results = tmp_path / "deadband.json"
    r = subprocess.run([sys.executable, "-m", "benchmarks.run", "--only", "deadband", "--smoke", "--workdir",
                        str(tmp_path / "work"), "--results", str(results)],
                       capture_output=True, text=True, timeout=110, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Report by exception" in r.stdout
    rows = {x["variant"]: x for x in json.loads(results.read_text())["results"]}
    every, rbe = rows["every sample"], rows["deadband"]
    assert every["stored"] == every["offered"] > 0
    assert 0 < rbe["stored"] < rbe["offered"]
    assert rbe["wire_payload_mb_per_hour"] < every["wire_payload_mb_per_hour"]
    assert rbe["outage_hours_2gb_at_40k"] > every["outage_hours_2gb_at_40k"]
