"""Modbus against a C server: linetap, then Node-RED, polling 8 devices x 992 float32 @ 25 ms
(`python -m benchmarks.run --only libmodbus`, also part of `--nodered`).

The pymodbus station simulators take 0.5-0.6 of the two cores at the Modbus ceiling (README.md,
"Performance"). Here the server is `libmodbus_server.c`: one C process that serves every
connection from one thread and costs next to nothing, so nearly all the CPU left goes to the
client being measured. Each device is its own TCP connection to that server and reads 992
float32 tags = holding registers 2000..3983 = 16 requests of 124 registers per poll, one request
in flight per connection. Offered: 8 x 992 x 40/s = 317,440 samples/s. No station tags, no unit
capture, no stations: linetap and Node-RED read exactly the same registers, and both count one
sample per float32 value (linetap's carries tag, quality and timestamps and is committed to
DuckDB before it is sent; Node-RED's is a bare float in a message, nothing stored).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from .common import Mosquitto, ProcWatch, Subscriber, percentile, stop_process
from .harness import TOPIC_ROOT, Result, pyspy_attach, read_status, start_agent, status_rates
from .modbus_e2e import ModbusScenario, line_config

DEVICES, TAGS, INTERVAL_MS = 8, 992, 25
REGS_PER_READ = 124  # 62 float32: what Node-RED's flow reads at a time, and linetap's plan for contiguous float32
SOURCE = Path(__file__).with_name("libmodbus_server.c")
INSTALL = "apt-get install -y libmodbus-dev"


class LibmodbusMissing(RuntimeError):
    """gcc or libmodbus-dev is not installed: the C server cannot be built."""


def _compile_flags() -> list[str]:
    pkg = shutil.which("pkg-config")
    if pkg:
        r = subprocess.run([pkg, "--cflags", "--libs", "libmodbus"], capture_output=True, text=True)
        if r.returncode == 0:
            return r.stdout.split()
    if Path("/usr/include/modbus/modbus.h").exists():
        return ["-I/usr/include/modbus", "-lmodbus"]
    raise LibmodbusMissing(f"libmodbus-dev is not installed ({INSTALL}): no C Modbus server to benchmark against")


def build(work: Path) -> Path:
    """Compile `libmodbus_server.c` into the work directory (never into the source tree)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise LibmodbusMissing("gcc not found (apt-get install -y gcc): the C Modbus server cannot be built")
    out = work / "libmodbus_server"
    r = subprocess.run([gcc, "-O2", "-o", str(out), str(SOURCE), *_compile_flags(), "-lm"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"gcc {SOURCE.name} failed:\n{r.stderr[-2000:]}")
    return out


class LibmodbusServer:
    """The compiled server, one process for all devices: `registers` holding registers from 2000 on."""

    def __init__(self, binary: Path, wd: Path, registers: int) -> None:
        from linetap.simulators import BULK_ADDRESS

        wd.mkdir(parents=True, exist_ok=True)
        self.log = wd / "libmodbus-server.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([str(binary), str(BULK_ADDRESS), str(registers)],
                                         stdout=subprocess.PIPE, stderr=log)
        self._port: int | None = None

    @property
    def pids(self) -> list[int]:
        return [self.proc.pid]

    def ports(self, timeout: float = 10.0) -> list[int]:
        """Its port, once it listens (the one line it prints), for every device to connect to."""
        if self._port is None:
            line: list[bytes] = []
            t = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)
            t.start()
            t.join(timeout)
            if not line or not line[0]:
                self.stop()
                raise RuntimeError(f"libmodbus server not listening: {self.log.read_text(errors='replace')[-2000:]}")
            self._port = json.loads(line[0])["port"]
        return [self._port]

    def stop(self) -> None:
        stop_process(self.proc)


def scenario(seconds: float) -> ModbusScenario:
    return ModbusScenario(f"libmodbus-{DEVICES}x{TAGS}@{INTERVAL_MS}", DEVICES, TAGS, INTERVAL_MS, seconds)


def run_linetap(sc: ModbusScenario, work: Path, binary: Path, profile: bool = False) -> Result:
    """The agent against the C server; with `profile`, py-spy samples the agent during the window."""
    wd = work / f"{sc.name}-linetap{'-profile' if profile else ''}"
    server = LibmodbusServer(binary, wd, 2 * sc.tags)
    broker = Mosquitto(wd / "broker")
    sub = agent = None
    try:
        broker.start()
        ports = server.ports()
        sub = Subscriber(broker.host, broker.port, TOPIC_ROOT, watch_tag=None).start()
        cfg = line_config(wd, broker, ports, sc.devices, sc.tags, sc.interval_ms, stations=False,
                          with_station_tags=False)
        for dev in cfg["devices"]:
            dev["max_registers_per_read"] = REGS_PER_READ
        (wd / "config.json").write_text(json.dumps(cfg))
        agent, first_sample_s = start_agent(wd, sub)
        time.sleep(sc.warmup)
        pids = {"agent": [agent.pid], "sims": server.pids, "broker": [broker.pid], "bench": [os.getpid()]}
        spy = pyspy_attach(agent.pid, sc.seconds, wd / "agent-profile.txt") if profile else None
        st0 = read_status(cfg)
        s0, m0, _ = sub.snapshot_marks()
        watch = ProcWatch(pids).start()
        time.sleep(sc.seconds)
        s1, m1, _ = sub.snapshot_marks()
        elapsed = watch.stop()
        st1 = read_status(cfg)
        if spy is not None:
            spy.wait(30)
        agent.terminate()
        lat = sub.telemetry_latency_ms(m0, m1)
        v: dict[str, Any] = {
            "delivered": (s1 - s0) / elapsed, "window_s": round(elapsed, 2), "first_sample_s": round(first_sample_s, 2),
            "rss_agent_max": watch.rss_max("agent"), "hwm_agent": watch.hwm["agent"], "profiled": profile,
            "agent_stop": "HUNG on SIGTERM (killed; task dump in agent.log)" if agent.hung else "clean",
            "tel_agent_p50": percentile(lat, 50), "tel_agent_p99": percentile(lat, 99),
            **{f"cpu_{k}": watch.cpu[k] for k in pids}, **status_rates(st0, st1)}
        if profile and (wd / "agent-profile.txt").exists():
            v["agent_profile"] = str(wd / "agent-profile.txt")
        return Result("libmodbus", "linetap", _with_rates(sc, v))
    finally:
        if sub is not None:
            sub.close()
        if agent is not None:
            agent.terminate()
        server.stop()
        broker.stop()


def run_nodered(sc: ModbusScenario, work: Path, binary: Path, log=print) -> Result:
    """The same flow as `--nodered` (one modbus-read per 124 registers), pointed at the C server."""
    from . import nodered

    nr = nodered.run_nodered(sc, work, 1, log, servers=lambda wd: LibmodbusServer(binary, wd, 2 * sc.tags))
    v = dict(nr.values)
    v["tel_agent_p50"], v["tel_agent_p99"] = v.pop("read_to_sub_p50"), v.pop("read_to_sub_p99")
    return Result("libmodbus", "Node-RED", _with_rates(sc, v))


def _with_rates(sc: ModbusScenario, v: dict[str, Any]) -> dict[str, Any]:
    offered = sc.devices * sc.tags * 1000 / sc.interval_ms
    v.update(devices=sc.devices, tags=sc.tags, interval_ms=sc.interval_ms, offered=offered,
             delivered_share=v["delivered"] / offered,
             us_per_sample=v["cpu_agent"] * 1e6 / v["delivered"] if v["delivered"] else None)
    return v


def run_all(work: Path, seconds: float, profile: bool, results: list[Result], required: bool = True,
            log=print) -> bool:
    """linetap, then Node-RED (then linetap under py-spy) against the C server; False if one failed,
    or if libmodbus-dev/gcc are missing and the scenario was `required` (asked for by name)."""
    sc = scenario(seconds)
    log(f"- libmodbus C server: {sc.devices} connections x {sc.tags} float32 ({2 * sc.tags} registers, "
        f"{2 * sc.tags // REGS_PER_READ} requests) @ {sc.interval_ms} ms, {sc.seconds:g} s ...", flush=True)
    try:
        binary = build(work)
    except LibmodbusMissing as exc:
        log(f"  SKIPPED: {exc}", flush=True)
        return not required
    ok = True
    runs = [("linetap", lambda: run_linetap(sc, work, binary)), ("Node-RED", lambda: run_nodered(sc, work, binary, log))]
    if profile:
        runs.append(("linetap under py-spy", lambda: run_linetap(sc, work, binary, profile=True)))
    for who, run in runs:
        try:
            results.append(run())
            v = results[-1].values
            log(f"  {who}: delivered {v['delivered']:,.0f} samples/s ({100 * v['delivered_share']:.0f}% of "
                f"{v['offered']:,.0f}), {v['cpu_agent']:.2f} cores", flush=True)
        except Exception as exc:  # noqa: BLE001 - report and go on
            ok = False
            log(f"  {who} FAILED: {exc}", flush=True)
    return ok


def print_libmodbus_table(results: list[Result], out=print) -> None:
    rows = [r for r in results if r.kind == "libmodbus"]
    if not rows:
        return
    v0 = rows[0].values
    out(f"\n### Modbus against a C libmodbus server: {v0['devices']} connections x {v0['tags']} float32 @ "
        f"{v0['interval_ms']} ms, no station tags (samples/s counted at the subscriber)")
    out("| client | offered/s | delivered/s | % of offered | CPU (cores) | µs CPU / delivered sample | "
        "RSS max / peak (MB) | server CPU | broker CPU | bench CPU | read -> subscriber p50 / p99 (ms) |")
    out("|---|---|---|---|---|---|---|---|---|---|---|")

    def f(x: Any, fmt: str = "{:,.0f}") -> str:
        return "-" if x is None else fmt.format(x)

    for r in rows:
        v = r.values
        out(f"| {r.name}{' (py-spy)' if v.get('profiled') else ''} | {f(v['offered'])} | {f(v['delivered'])} | "
            f"{f(100 * v['delivered_share'], '{:.1f}%')} | {f(v['cpu_agent'], '{:.2f}')} | "
            f"{f(v['us_per_sample'], '{:.1f}')} | {f(v['rss_agent_max'] / 1e6)} / {f(v['hwm_agent'] / 1e6)} | "
            f"{f(v['cpu_sims'], '{:.2f}')} | {f(v['cpu_broker'], '{:.2f}')} | {f(v['cpu_bench'], '{:.2f}')} | "
            f"{f(v.get('tel_agent_p50'))} / {f(v.get('tel_agent_p99'))} |")
    lt = next((r.values for r in rows if r.name == "linetap" and not r.values.get("profiled")), None)
    nr = next((r.values for r in rows if r.name == "Node-RED"), None)
    if lt and nr and lt["us_per_sample"] and nr["us_per_sample"]:
        out(f"- linetap / Node-RED: CPU per delivered sample {lt['us_per_sample']:.1f} / {nr['us_per_sample']:.1f} µs "
            f"= {lt['us_per_sample'] / nr['us_per_sample']:.2f}x; delivered {lt['delivered']:,.0f} / "
            f"{nr['delivered']:,.0f} = {lt['delivered'] / max(nr['delivered'], 1e-9):.2f}x")
    for r in rows:
        if r.values.get("agent_stop") not in (None, "clean"):
            out(f"- {r.name}: agent {r.values['agent_stop']}")
        if r.values.get("agent_profile"):
            from .report import profile_stages, summarize_profile

            v = r.values
            out(f"\n### linetap agent under py-spy against the C server: CPU per sample read, by stage "
                f"({v['cpu_agent']:.2f} cores at {v['read']:,.0f} samples/s read)")
            out("| stage | share of busy samples | µs CPU / sample |")
            out("|---|---|---|")
            for stage, share, us in profile_stages(Path(v["agent_profile"]), v["cpu_agent"], v["read"]):
                out(f"| {stage} | {100 * share:.1f}% | {us:.2f} |")
            out(f"\n```\n{summarize_profile(Path(v['agent_profile']), top=15)}\n```")
