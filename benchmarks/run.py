"""`python -m benchmarks.run [--smoke | --long] [--nodered] [--profile] [--opcua]`: linetap end to end on this machine.

Every part runs in its own process: Modbus station simulators (one pymodbus server per device
up to `--max-sims`), a private Mosquitto on a free port, the agent (`benchmarks.procs agent`),
and this process, which only counts at a paho QoS 1 subscriber and reads /proc. See README.md
for what each number means.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .common import Mosquitto, ProcWatch, Subscriber, percentile

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
AGENT_ID = "bench-line"
TOPIC_ROOT = "acme/bench/area/line"
STANDBY_TEMPERATURE = 150.0  # simulators/station.py: the ramp starts here


@dataclass
class ModbusScenario:
    name: str
    devices: int
    tags: int  # bulk float32 tags per device (the 12 station tags come on top)
    interval_ms: int
    seconds: float
    warmup: float = 3.0
    # The 12 station tags (unit capture, non-conformance) on their own connection polled this
    # often, as a controls engineer sets up a fast poll group; None: in the bulk poll at interval_ms.
    station_ms: int | None = None


@dataclass
class Result:
    kind: str
    name: str
    values: dict[str, Any] = field(default_factory=dict)


# --- processes ---------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class Child:
    """A child process that prints one JSON line when ready."""

    def __init__(self, args: list[str], log: Path, wrap: list[str] | None = None) -> None:
        self.log = log
        self._log = open(log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([*(wrap or []), PY, "-m", "benchmarks.procs", *args], cwd=ROOT, env=_env(),
                                     stdout=subprocess.PIPE, stderr=self._log)
        self.info: dict[str, Any] = {}
        self.wrapped = bool(wrap)
        self.hung = False
        self._pid: int | None = None

    def ready(self, timeout: float = 30.0) -> dict[str, Any]:
        line: list[bytes] = []
        t = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        if not line or not line[0]:
            self.kill()
            raise RuntimeError(f"child {self.proc.args} not ready: {self.log.read_text(errors='replace')[-2000:]}")
        self.info = json.loads(line[0])
        return self.info

    @property
    def pid(self) -> int:
        """The Python process (under py-spy: py-spy's child)."""
        if not self.wrapped:
            return self.proc.pid
        if self._pid is not None:
            return self._pid
        for _ in range(100):
            with contextlib.suppress(OSError):
                for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
                    kids = (task / "children").read_text().split()
                    if kids:
                        self._pid = int(kids[0])
                        return self._pid
            time.sleep(0.05)
        raise RuntimeError("py-spy child not found")

    def terminate(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait. A child that does not stop gets SIGUSR1 (the agent dumps its asyncio
        tasks to its log), then SIGKILL; `hung` says so. Under py-spy only the Python child is killed,
        so py-spy still writes its profile."""
        if self.proc.poll() is None:
            pid = self.pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.hung = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGUSR1)
                    time.sleep(1.0)
                    os.kill(pid, signal.SIGKILL)
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    self.kill()
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _example() -> tuple[dict[str, Any], dict[str, Any]]:
    """The heat-sealer example's device tags and station capture (config/examples/heat-sealer-modbus.yaml)."""
    from linetap.config.loader import load_config

    with resources.as_file(resources.files("linetap.config") / "examples" / "heat-sealer-modbus.yaml") as p:
        cfg = load_config(p)
    return cfg.devices[0].model_dump(mode="json", exclude_none=True), cfg.stations[0].model_dump(
        mode="json", exclude_none=True)


def line_config(workdir: Path, broker: Mosquitto, sim_ports: list[int], devices: int, tags: int,
                interval_ms: int, stations: bool = True, station_ms: int | None = None) -> dict[str, Any]:
    """Device `devN` holds the station tags; with `station_ms` it polls only those, that often, and
    `devN-bulk` (a second connection to the same simulator) polls the bulk tags every `interval_ms`."""
    from linetap.simulators import BULK_ADDRESS, BULK_COUNT

    device, station = _example()
    bulk = [{"name": f"load_{i:04d}", "address": BULK_ADDRESS + 2 * i, "type": "float32"}
            for i in range(min(tags, BULK_COUNT))]
    devs, stns = [], []
    for i in range(devices):
        name = f"dev{i}"
        port = sim_ports[i % len(sim_ports)]
        if station_ms is None:
            devs.append({**device, "name": name, "port": port, "poll_interval": f"{interval_ms}ms",
                         "tags": [*device["tags"], *bulk]})
        else:
            devs.append({**device, "name": name, "port": port, "poll_interval": f"{station_ms}ms"})
            if bulk:
                devs.append({**device, "name": f"{name}-bulk", "port": port, "poll_interval": f"{interval_ms}ms",
                             "tags": bulk})
        if stations:
            stns.append({**station, "name": name, "device": name})
    return {
        "agent": {"id": AGENT_ID, "enterprise": "acme", "site": "bench", "area": "area", "line": "line"},
        "mqtt": {"host": broker.host, "port": broker.port, "keepalive": "10s"},
        "buffer": {"path": str(workdir / "buffer.duckdb")},
        "logging": {"format": "json", "level": "warning"},
        "reconnect": {"min": "200ms", "max": "2s"},
        "devices": devs,
        "stations": stns,
    }


def read_status(cfg: dict[str, Any]) -> dict[str, Any] | None:
    path = Path(cfg["buffer"]["path"] + ".status.json")
    with contextlib.suppress(OSError, ValueError):
        return json.loads(path.read_text())
    return None


# --- Modbus end to end ---------------------------------------------------------------------------


def run_modbus(sc: ModbusScenario, work: Path, max_sims: int, profile: Path | None = None,
               log=print) -> Result:
    wd = work / sc.name
    wd.mkdir(parents=True, exist_ok=True)
    n_sims = max(1, min(sc.devices, max_sims))
    sims: list[Child] = []
    broker = Mosquitto(wd / "broker")
    sub = agent = None
    res = Result("modbus", sc.name)
    try:
        for i in range(n_sims):
            sims.append(Child(["sim", "--seed", str(i + 1), "--truth", str(wd / f"truth{i}.json")],
                              wd / f"sim{i}.log"))
        broker.start()
        infos = [s.ready() for s in sims]
        sub = Subscriber(broker.host, broker.port, TOPIC_ROOT).start()
        cfg = line_config(wd, broker, [i["port"] for i in infos], sc.devices, sc.tags, sc.interval_ms,
                          station_ms=sc.station_ms)
        (wd / "config.json").write_text(json.dumps(cfg))
        wrap = None
        if profile is not None:
            wrap = [str(Path(PY).parent / "py-spy"), "record", "--nonblocking", "--threads", "--rate", "200",
                    "--format", "raw", "--output", str(profile), "--"]
        agent, first_sample_s = start_agent(wd, sub, wrap=wrap)
        time.sleep(sc.warmup)
        pids = {"agent": [agent.pid], "sims": [s.pid for s in sims], "broker": [broker.pid], "bench": [os.getpid()]}
        st0 = read_status(cfg)
        s0, m0, e0 = sub.snapshot_marks()
        w0 = time.time()
        watch = ProcWatch(pids).start()
        time.sleep(sc.seconds)
        s1, m1, e1 = sub.snapshot_marks()
        w1 = time.time()
        elapsed = watch.stop()
        st1 = read_status(cfg)
        agent_rc = agent.terminate()
        res.values["agent_stop"] = "HUNG on SIGTERM (killed; task dump in agent.log)" if agent.hung else "clean"
        for s in sims:
            s.terminate()
        time.sleep(0.3)  # the last events in flight
        truths = [json.loads((wd / f"truth{i}.json").read_text()) for i in range(n_sims)]
        agent_result = json.loads((wd / "agent.json").read_text()) if (wd / "agent.json").exists() else {}
        station_tags = len(_example()[0]["tags"])
        tags_per_device = sc.tags + station_tags
        per_device = sc.tags * 1000 / sc.interval_ms + station_tags * 1000 / (sc.station_ms or sc.interval_ms)
        offered = sc.devices * per_device
        v = res.values
        v.update(devices=sc.devices, tags=tags_per_device, interval_ms=sc.interval_ms, station_ms=sc.station_ms,
                 offered=offered,
                 window_s=round(elapsed, 2), first_sample_s=round(first_sample_s, 2),
                 delivered=(s1 - s0) / elapsed, agent_rc=agent_rc, profiled=profile is not None)
        for k in pids:
            v[f"cpu_{k}"] = watch.cpu[k]
        v["rss_agent_max"] = watch.rss_max("agent")
        v["rss_agent_mean"] = watch.rss_mean("agent")
        v["hwm_agent"] = watch.hwm["agent"]
        v["ru_maxrss_agent"] = agent_result.get("ru_maxrss")
        if st0 and st1 and st1["written_at"] > st0["written_at"]:
            dt = (st1["written_at"] - st0["written_at"]) / 1e6
            read0 = sum(d["samples"] for d in st0["devices"].values())
            read1 = sum(d["samples"] for d in st1["devices"].values())
            v["read"] = (read1 - read0) / dt
            pend = {s["stream"]: s["pending"] for s in st1["streams"]}
            v["backlog_end"] = pend.get("telemetry")
            pend0 = {s["stream"]: s["pending"] for s in st0["streams"]}
            v["backlog_growth"] = (pend.get("telemetry", 0) - pend0.get("telemetry", 0)) / dt
        rx = sub.rx
        with sub._lock:
            tel = rx.telemetry_lat[m0:m1]
            events = list(rx.events)
            serial_seen = dict(rx.serial_seen)
            v["duplicates"] = rx.duplicates
        lat_tel = [(t - a / 1e6) * 1000 for t, a, _ in tel]
        v["tel_agent_p50"], v["tel_agent_p99"] = percentile(lat_tel, 50), percentile(lat_tel, 99)
        # telemetry, ground truth: a new serial appears at the simulator (unit start) -> first message showing it
        lat_serial = []
        for (device, serial), t in serial_seen.items():
            if not (w0 <= t <= w1):
                continue
            truth = truths[int(device[3:]) % n_sims]
            unit = next((u for u in truth["units"] if u["serial"] == serial), None)
            if unit is not None:
                lat_serial.append((t - (truth["wall0"] + unit["started_at"] / truth["speed"])) * 1000)
        v["tel_truth_n"] = len(lat_serial)
        v["tel_truth_p50"], v["tel_truth_p99"] = percentile(lat_serial, 50), percentile(lat_serial, 99)
        lat_nc_agent, lat_nc_truth, unmatched = [], [], 0
        nc_split: dict[str, list[float]] = {"commit": [], "forward": [], "deliver": []}
        for t, doc in events:
            body = doc.get("body", {})
            if body.get("kind") != "nonconformance" or not (w0 <= t <= w1):
                continue
            lat_nc_agent.append((t - body["ts"] / 1e6) * 1000)
            # where the agent's part goes: read -> committed -> taken by the forwarder -> subscriber
            nc_split["commit"].append((doc["recorded_at"] - body["ts"]) / 1e3)
            nc_split["forward"].append((doc["sent_at"] - doc["recorded_at"]) / 1e3)
            nc_split["deliver"].append((t - doc["sent_at"] / 1e6) * 1000)
            truth = truths[int(body["device"][3:]) % n_sims]
            tt = nc_truth_time(body, truth)
            if tt is None:
                unmatched += 1
            else:
                lat_nc_truth.append((t - tt) * 1000)
        v["nc_n"], v["nc_unmatched"] = len(lat_nc_agent), unmatched
        v["nc_agent_p50"], v["nc_agent_p99"] = percentile(lat_nc_agent, 50), percentile(lat_nc_agent, 99)
        v["nc_truth_p50"], v["nc_truth_p99"] = percentile(lat_nc_truth, 50), percentile(lat_nc_truth, 99)
        v["nc_truth_max"] = max(lat_nc_truth, default=None)
        v["nc_split"] = {k: (percentile(x, 50), percentile(x, 99)) for k, x in nc_split.items()}
        v["sim_requests_per_s"] = sum(t["requests"] for t in truths) / max(1e-9, time.time() - w0 + elapsed)
        return res
    finally:
        if sub is not None:
            sub.close()
        if agent is not None:
            agent.terminate()
        for s in sims:
            s.terminate()
        broker.stop()


def start_agent(wd: Path, sub: Subscriber, wrap: list[str] | None = None, timeout: float = 30.0
                ) -> tuple[Child, float]:
    """The agent child on `wd/config.json`, once its first telemetry reached the subscriber;
    and how long that took (s)."""
    agent = Child(["agent", str(wd / "config.json"), "--result", str(wd / "agent.json")], wd / "agent.log", wrap=wrap)
    t_spawn = time.monotonic()
    while sub.samples() == 0:
        if time.monotonic() - t_spawn > timeout or agent.proc.poll() is not None:
            agent.terminate()
            raise RuntimeError(f"no telemetry at the subscriber: {(wd / 'agent.log').read_text()[-2000:]}")
        time.sleep(0.05)
    return agent, time.monotonic() - t_spawn


def nc_truth_time(body: dict[str, Any], truth: dict[str, Any]) -> float | None:
    """Wall time at which the simulator first served the value that makes the breach certain.

    during the cycle: pressure out of limits is served from the unit's start (pressure is on from the
    start of the ramp); a temperature above its high limit from the moment the linear ramp
    (150 degC -> setpoint over `ramp_time`) crosses the limit. At the end of the cycle (a max below
    its low limit, the dwell latched at the end): the unit's end (cycle_active falls).
    """
    unit = next((u for u in truth["units"] if u["serial"] == body.get("serial")), None)
    if unit is None:
        return None
    if body.get("during_cycle"):
        if "temperature" in body.get("parameter", ""):
            sp = unit["temperature_setpoint"]
            frac = (body["limit_value"] - STANDBY_TEMPERATURE) / (sp - STANDBY_TEMPERATURE)
            t = unit["started_at"] + truth["ramp_time"] * min(max(frac, 0.0), 1.0)
        else:
            t = unit["started_at"]
    else:
        t = unit["ended_at"]
    return truth["wall0"] + t / truth["speed"]


# --- buffer append + backlog drain ------------------------------------------------------------------


def _telemetry_tables(rows: int, devices: int = 4, tags: int = 1000, variants: int = 4):
    import numpy as np
    import pyarrow as pa

    from linetap.drivers.samples import TELEMETRY_SCHEMA, now_us

    out = []
    per = rows // devices
    idx = np.arange(per) % tags
    tag_names = pa.array([f"load_{i:04d}" for i in range(tags)]).take(pa.array(idx))
    for k in range(variants):
        t0 = now_us()
        cols = {"device": [], "tag": [], "num": [], "agent_ts": []}
        for d in range(devices):
            cols["device"].append(pa.repeat(pa.scalar(f"dev{d}", pa.string()), per))
            cols["tag"].append(tag_names)
            poll = np.arange(per) // tags
            cols["num"].append(pa.array(idx + np.sin(k + poll * 0.1 + idx / 10)))
            cols["agent_ts"].append(pa.array(t0 + poll * 100_000, pa.int64()))
        n = per * devices
        out.append(pa.Table.from_arrays([
            pa.concat_arrays(cols["device"]), pa.concat_arrays(cols["tag"]), pa.concat_arrays(cols["num"]),
            pa.nulls(n, pa.string()), pa.array(np.zeros(n, dtype=np.uint8)), pa.nulls(n, pa.string()),
            pa.nulls(n, pa.int64()), pa.concat_arrays(cols["agent_ts"]), pa.array(np.zeros(n, dtype=np.uint8)),
        ], schema=TELEMETRY_SCHEMA))
    return out


def fill_buffer(path: Path, total: int, batch: int = 50_000) -> Result:
    """DuckDBBuffer.append of Arrow batches of `batch` rows (the agent's early-commit size)."""
    from linetap.buffers.duckdb_buffer import DuckDBBuffer

    tables = _telemetry_tables(batch)
    buf = DuckDBBuffer(path, AGENT_ID)
    appended = 0
    t0 = time.perf_counter()
    k = 0
    while appended < total:
        table = tables[k % len(tables)]
        if total - appended < table.num_rows:
            table = table.slice(0, total - appended)
        buf.append(table)
        appended += table.num_rows
        k += 1
    t_append = time.perf_counter() - t0
    before_ckpt = buf.file_size()
    t1 = time.perf_counter()
    buf.close()  # CHECKPOINT
    t_close = time.perf_counter() - t1
    size = path.stat().st_size
    wal = path.with_name(path.name + ".wal")
    size += wal.stat().st_size if wal.exists() else 0
    return Result("append", f"{total:,} rows", {
        "rows": total, "batch": batch, "append_rate": total / t_append, "checkpoint_s": t_close,
        "bytes_per_m_before_ckpt": before_ckpt / total * 1e6, "bytes_per_m": size / total * 1e6,
        "file_bytes": size})


def run_drain(rows: int, work: Path, timeout: float, log=print) -> list[Result]:
    wd = work / f"drain-{rows}"
    wd.mkdir(parents=True, exist_ok=True)
    path = wd / "buffer.duckdb"
    append = fill_buffer(path, rows)
    broker = Mosquitto(wd / "broker").start()
    sub = Subscriber(broker.host, broker.port, TOPIC_ROOT, watch_tag=None).start()
    cfg = line_config(wd, broker, [1], 4, 0, 100, stations=False)  # devices only name the topics
    (wd / "config.json").write_text(json.dumps(cfg))
    drain = Child(["drain", str(wd / "config.json"), "--result", str(wd / "drain.json")], wd / "drain.log")
    res = Result("drain", f"{rows:,} rows")
    try:
        t_spawn = time.monotonic()
        drain.ready(60)
        t_ready = time.monotonic()
        watch = ProcWatch({"drain": [drain.pid], "broker": [broker.pid], "bench": [os.getpid()]}, 0.2).start()
        t_first = None
        while True:
            n = sub.samples()
            if t_first is None and n:
                t_first = time.monotonic()
            if n >= rows:
                break
            if time.monotonic() - t_ready > timeout or drain.proc.poll() is not None:
                break
            time.sleep(0.01)
        t_done = time.monotonic()
        elapsed = watch.stop()
        got = sub.samples()
        v = res.values
        v.update(rows=rows, delivered_rows=got, complete=got >= rows, seconds=round(t_done - t_ready, 2),
                 start_s=round(t_ready - t_spawn, 2), first_msg_s=round((t_first or t_done) - t_ready, 3),
                 rate=got / (t_done - t_ready), cpu_drain=watch.cpu["drain"], cpu_broker=watch.cpu["broker"],
                 cpu_bench=watch.cpu["bench"], rss_max=watch.rss_max("drain"), rss_mean=watch.rss_mean("drain"),
                 hwm=watch.hwm["drain"], window_s=round(elapsed, 2), duplicates=sub.rx.duplicates)
        return [append, res]
    finally:
        sub.close()
        drain.terminate()
        broker.stop()


# --- profile ---------------------------------------------------------------------------------------


def summarize_profile(raw: Path, top: int = 25) -> str:
    """py-spy raw (collapsed) stacks -> self time and inclusive time per function, in % of samples."""
    self_t: dict[str, int] = {}
    incl: dict[str, int] = {}
    threads: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
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


# --- output ------------------------------------------------------------------------------------------


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
    if any(r.kind == "opcua" for r in results):
        from .opcua_bench import print_opcua_table

        print_opcua_table(results, out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    p.add_argument("--smoke", action="store_true", help="a few seconds in total (CI)")
    p.add_argument("--long", action="store_true", help="also the 10M-sample backlog drain")
    p.add_argument("--nodered", action="store_true", help="Node-RED side by side (npm install on first use)")
    p.add_argument("--profile", action="store_true", help="one more run of the 80k scenario under py-spy")
    p.add_argument("--only", choices=("modbus", "opcua", "drain", "nodered", "profile"), action="append",
                   help="run only these parts")
    p.add_argument("--seconds", type=float, default=None, help="measurement window per end-to-end run")
    p.add_argument("--max-sims", type=int, default=4, help="simulator processes at most (one per device)")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--results", type=Path, default=None,
                   help="where to write the results as JSON (default: benchmarks/results/latest.json; "
                        "with --smoke: results.json in the work directory, so CI never writes into the source tree)")
    args = p.parse_args(argv)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="linetap-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    only = set(args.only or [])

    def wanted(part: str) -> bool:
        return not only or part in only

    print(f"# linetap benchmark ({'smoke' if args.smoke else 'long' if args.long else 'standard'})", flush=True)
    print(machine_facts(), flush=True)
    print(f"workdir: {work}", flush=True)
    results: list[Result] = []
    if args.smoke:
        secs = args.seconds or 3.0
        scenarios = [ModbusScenario("smoke", 2, 100, 100, secs, warmup=1.0, station_ms=50)]
        drains = [100_000]
    else:
        secs = args.seconds or 20.0
        scenarios = [
            ModbusScenario("40k", 4, 1000, 100, secs),
            ModbusScenario("80k", 4, 1000, 50, secs),
            ModbusScenario("160k", 4, 1000, 25, secs),
            ModbusScenario("320k", 8, 1000, 25, secs),  # the ceiling: more devices than simulator processes
            # non-conformance latency at load: station tags on their own 20 ms poll, bulk as above
            ModbusScenario("40k+nc", 4, 1000, 100, secs, station_ms=20),
            ModbusScenario("160k+nc", 4, 1000, 25, secs, station_ms=20),
        ]
        drains = [1_000_000] + ([10_000_000] if args.long else [])
    ok = True
    if wanted("modbus"):
        for sc in scenarios:
            print(f"- modbus {sc.name}: {sc.devices} devices x {sc.tags}+12 tags @ {sc.interval_ms} ms, "
                  f"{sc.seconds:g} s ...", flush=True)
            try:
                results.append(run_modbus(sc, work, args.max_sims))
                print(f"  delivered {results[-1].values['delivered']:,.0f} samples/s", flush=True)
            except Exception as exc:  # noqa: BLE001 - report and go on
                ok = False
                print(f"  FAILED: {exc}", flush=True)
    if wanted("opcua"):
        from .opcua_bench import opcua_scenarios, run_opcua

        for osc in opcua_scenarios(args.smoke, secs):
            print(f"- opcua {osc.name}: {osc.sims} simulators x {osc.items} items @ {osc.interval_ms} ms, "
                  f"{osc.seconds:g} s ...", flush=True)
            try:
                results.append(run_opcua(osc, work))
                print(f"  offered {results[-1].values.get('offered') or 0:,.0f}/s, delivered "
                      f"{results[-1].values['delivered']:,.0f} samples/s", flush=True)
            except Exception as exc:  # noqa: BLE001
                ok = False
                print(f"  FAILED: {exc}", flush=True)
    if wanted("drain"):
        for rows in drains:
            print(f"- backlog drain {rows:,} ...", flush=True)
            try:
                results.extend(run_drain(rows, work, timeout=max(60.0, rows / 20_000)))
                print(f"  {results[-1].values['rate']:,.0f} samples/s", flush=True)
            except Exception as exc:  # noqa: BLE001
                ok = False
                print(f"  FAILED: {exc}", flush=True)
    if args.nodered and wanted("nodered"):
        from . import nodered

        settings = [(2, 100, 100)] if args.smoke else [(4, 1000, 100), (4, 1000, 25)]  # the target, and a ceiling
        for devices, tags, interval in settings:
            sc = ModbusScenario(f"nodered-{devices}x{tags}@{interval}", devices, tags, interval, secs)
            try:
                results.extend(nodered.compare(sc, work, args.max_sims, results))
            except Exception as exc:  # noqa: BLE001
                ok = False
                print(f"  Node-RED FAILED: {exc}", flush=True)
    profile_text = None
    if args.profile and wanted("opcua") and not args.smoke:
        from .opcua_bench import opcua_profile_scenario, run_opcua

        osc = opcua_profile_scenario(secs)
        print(f"- profile (py-spy) of the agent and one simulator at opcua {osc.name} ...", flush=True)
        try:
            results.append(run_opcua(osc, work / "profile-opcua", profile=True))
        except Exception as exc:  # noqa: BLE001
            ok = False
            print(f"  opcua profile FAILED: {exc}", flush=True)
    if args.profile and (wanted("profile") or "profile" in only):
        sc = ModbusScenario("80k", 4, 1000, 50, secs)
        raw = work / "agent-profile.txt"
        print("- profile (py-spy) of the agent at 80k offered ...", flush=True)
        try:
            results.append(run_modbus(sc, work / "profile", args.max_sims, profile=raw))
            profile_text = summarize_profile(raw)
        except Exception as exc:  # noqa: BLE001
            ok = False
            print(f"  profile FAILED: {exc}", flush=True)
    print_table(results)
    if profile_text:
        print("\n### Agent profile\n```\n" + profile_text + "\n```")
    for r in results:
        for who in ("agent", "sim"):
            raw = r.values.get(f"{who}_profile") if r.kind == "opcua" else None
            if raw:
                text = summarize_profile(Path(raw), top=15)
                print(f"\n### OPC UA {'agent' if who == 'agent' else 'simulator (one of them)'} profile ({r.name})"
                      f"\n```\n{text}\n```")
    results_path = args.results or (work / "results.json" if args.smoke else ROOT / "benchmarks" / "results" / "latest.json")
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps({
        "machine": machine_facts(), "argv": sys.argv[1:], "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "results": [r.__dict__ for r in results]}, indent=1, default=str))
    if args.smoke:
        # CI: the pipeline must deliver something end to end and drain completely
        e2e = [r for r in results if r.kind == "modbus"]
        drained = [r for r in results if r.kind == "drain"]
        opc = [r for r in results if r.kind == "opcua"]
        ok = ok and (bool(e2e) or not wanted("modbus")) and all(r.values["delivered"] > 0 for r in e2e) \
            and all(r.values["complete"] for r in drained) \
            and (not wanted("opcua") or (bool(opc) and all(r.values["delivered"] > 0 for r in opc)))
    print(f"\nresults: {results_path}; {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
