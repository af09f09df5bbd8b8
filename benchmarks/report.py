"""What the bench prints: machine facts, the markdown tables, py-spy profile summaries."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from .harness import Result


def _stacks(raw: Path):
    """(stack, samples) of each line of py-spy's raw (collapsed) output."""
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            yield stack, int(count)


def summarize_profile(raw: Path, top: int = 25) -> str:
    """py-spy raw (collapsed) stacks -> self time and inclusive time per function, in % of samples."""
    self_t: dict[str, int] = {}
    incl: dict[str, int] = {}
    threads: dict[str, int] = {}
    total = 0
    for stack, n in _stacks(raw):
        total += n
        frames = stack.split(";")
        threads[frames[0]] = threads.get(frames[0], 0) + n
        leaf = frames[-1]
        self_t[leaf] = self_t.get(leaf, 0) + n
        for f in set(frames[1:]):
            incl[f] = incl.get(f, 0) + n
    if not total:
        return "(no samples)"
    out = [f"py-spy: {total} samples (200 Hz, active threads only, --nonblocking)", "", "by thread:"]
    for k, n in sorted(threads.items(), key=lambda x: -x[1]):
        out.append(f"  {100 * n / total:5.1f}%  {k}")
    out += ["", f"top {top} by self time:"]
    for k, n in sorted(self_t.items(), key=lambda x: -x[1])[:top]:
        out.append(f"  {100 * n / total:5.1f}%  {k}")
    out += ["", f"top {top} by inclusive time:"]
    for k, n in sorted(incl.items(), key=lambda x: -x[1])[:top]:
        out.append(f"  {100 * n / total:5.1f}%  {k}")
    return "\n".join(out)


def _f(x: Any, fmt: str = "{:,.0f}") -> str:
    return "-" if x is None else fmt.format(x)


def _mb(x: Any) -> str:
    return "-" if not x else f"{x / 1e6:.0f}"


def machine_facts() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import duckdb
    import paho.mqtt
    import pymodbus

    mosq = "?"
    with contextlib.suppress(Exception):
        from .common import find_mosquitto
        out = subprocess.run([find_mosquitto(), "-h"], capture_output=True, text=True, timeout=5).stdout
        mosq = out.splitlines()[0].split()[-1] if out else "?"
    return (f"nproc={os.cpu_count()} cpu={cpu!r} python={platform.python_version()} "
            f"duckdb={duckdb.__version__} pymodbus={pymodbus.__version__} paho={paho.mqtt.__version__} "
            f"mosquitto={mosq} kernel={platform.release()}")


def print_table(results: list[Result], out=print) -> None:
    mod = [r for r in results if r.kind in ("modbus", "nodered")]
    if mod:
        out("\n### End to end: simulator -> agent -> DuckDB -> MQTT -> subscriber (samples/s counted at the subscriber)")
        out("| run | D x T @ I | offered/s | read/s | delivered/s | backlog +/s | agent CPU (cores) | "
            "agent RSS max / peak (MB) | sims CPU | broker CPU | bench CPU |")
        out("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in mod:
            v = r.values
            station = f" (station tags @ {v['station_ms']} ms)" if v.get("station_ms") else ""
            out(f"| {r.name}{' (py-spy)' if v.get('profiled') else ''} | {v['devices']} x {v['tags']} @ "
                f"{v['interval_ms']} ms{station} | {_f(v['offered'])} | {_f(v.get('read'))} | {_f(v['delivered'])} | "
                f"{_f(v.get('backlog_growth'))} | {_f(v['cpu_agent'], '{:.2f}')} | "
                f"{_mb(v['rss_agent_max'])} / {_mb(v['hwm_agent'])} | {_f(v.get('cpu_sims'), '{:.2f}')} | "
                f"{_f(v.get('cpu_broker'), '{:.2f}')} | {_f(v.get('cpu_bench'), '{:.2f}')} |")
        for r in mod:
            if r.values.get("agent_stop") not in (None, "clean"):
                out(f"- {r.name}: agent {r.values['agent_stop']}")
        lat = [r for r in mod if r.kind == "modbus"]
        out("\n### Latency (ms), same runs, telemetry at the load above")
        out("| run | telemetry: agent read -> subscriber p50 / p99 | telemetry: new serial at simulator -> "
            "subscriber p50 / p99 (n) | NC: simulator ground truth -> subscriber p50 / p99 / max (n) | "
            "NC: event ts (agent read) -> subscriber p50 / p99 | NC split p50/p99: read -> committed, "
            "committed -> published, published -> subscriber |")
        out("|---|---|---|---|---|---|")
        for r in lat:
            v = r.values
            out(f"| {r.name} | {_f(v['tel_agent_p50'])} / {_f(v['tel_agent_p99'])} | {_f(v['tel_truth_p50'])} / "
                f"{_f(v['tel_truth_p99'])} ({v['tel_truth_n']}) | {_f(v['nc_truth_p50'])} / {_f(v['nc_truth_p99'])} / "
                f"{_f(v['nc_truth_max'])} ({v['nc_n']}{', unmatched ' + str(v['nc_unmatched']) if v['nc_unmatched'] else ''}) | "
                f"{_f(v['nc_agent_p50'])} / {_f(v['nc_agent_p99'])} | "
                + ", ".join(f"{_f(a)}/{_f(b)}" for a, b in v.get("nc_split", {}).values()) + " |")
    app = [r for r in results if r.kind == "append"]
    if app:
        out("\n### Buffer append (DuckDBBuffer.append, Arrow batches of 50,000 rows, one transaction each)")
        out("| rows | samples/s | file bytes per 1M samples (after CHECKPOINT) | before CHECKPOINT (with WAL) | "
            "checkpoint s |")
        out("|---|---|---|---|---|")
        for r in app:
            v = r.values
            out(f"| {v['rows']:,} | {_f(v['append_rate'])} | {_mb(v['bytes_per_m'])} MB | "
                f"{_mb(v['bytes_per_m_before_ckpt'])} MB | {v['checkpoint_s']:.2f} |")
    dr = [r for r in results if r.kind == "drain"]
    if dr:
        out("\n### Backlog drain (MQTTForwarder + AsyncBuffer alone over a pre-filled buffer -> subscriber)")
        out("| backlog | delivered | seconds | samples/s | forwarder CPU | RSS mean / max / peak (MB) | "
            "broker CPU | bench CPU |")
        out("|---|---|---|---|---|---|---|---|")
        for r in dr:
            v = r.values
            out(f"| {v['rows']:,} | {v['delivered_rows']:,}{'' if v['complete'] else ' (TIMEOUT)'} | {v['seconds']} | "
                f"{_f(v['rate'])} | {v['cpu_drain']:.2f} | {_mb(v['rss_mean'])} / {_mb(v['rss_max'])} / "
                f"{_mb(v['hwm'])} | {v['cpu_broker']:.2f} | {v['cpu_bench']:.2f} |")
    cmp_ = [r for r in results if r.kind == "compare"]
    for r in cmp_:
        out(f"\n### linetap / Node-RED ({r.name})")
        for k, val in r.values.items():
            out(f"- {k}: {val}")
    if any(r.kind == "libmodbus" for r in results):
        from .libmodbus import print_libmodbus_table

        print_libmodbus_table(results, out)
    if any(r.kind == "opcua" for r in results):
        from .opcua_bench import print_opcua_table

        print_opcua_table(results, out)


# Which stage of the telemetry path a py-spy stack is in: the first rule whose marker is in the stack.
STAGE_RULES = (
    ("append (DuckDB, buffer thread)", ("append_telemetry", "_insert_arrow")),
    ("buffer read (DuckDB, buffer thread)", ("read_telemetry",)),
    ("cursor writes (DuckDB, buffer thread)", ("DuckDBBuffer.ack",)),
    ("decode (registers -> columns)", ("decode_block",)),
    ("batch -> Arrow", ("to_arrow",)),
    ("capture", ("CaptureEngine.feed",)),
    ("encode (JSON envelope)", ("encode_telemetry", "telemetry_chunk", "telemetry_rows")),
    ("publish (paho)", ("paho-mqtt-client", "paho/", "_send_queued")),
    ("pymodbus (request, reply, socket)", ("pymodbus/", "ModbusDriver._request", "selector_events.py")),
)
IDLE_LEAVES = ("EpollSelector.select", "select (selectors.py", "_worker (concurrent/futures/thread.py:81)")


def profile_stages(raw: Path, cpu_cores: float, samples_per_s: float) -> list[tuple[str, float, float]]:
    """(stage, share of the agent's busy samples, µs of CPU per sample read) from py-spy raw stacks.
    Waiting (epoll, an idle worker thread) is left out; the agent's measured CPU is spread over the
    stages by their share of the busy samples."""
    counts: dict[str, int] = {}
    busy = 0
    for stack, n in _stacks(raw):
        if stack.rsplit(";", 1)[-1].startswith(IDLE_LEAVES):
            continue
        busy += n
        stage = next((name for name, marks in STAGE_RULES if any(m in stack for m in marks)),
                     "other (event loop, runtime, forwarder)")
        counts[stage] = counts.get(stage, 0) + n
    if not busy or not samples_per_s:
        return []
    per_sample = cpu_cores * 1e6 / samples_per_s
    order = [name for name, _ in STAGE_RULES] + ["other (event loop, runtime, forwarder)"]
    return [(s, counts[s] / busy, counts[s] / busy * per_sample) for s in order if s in counts]
