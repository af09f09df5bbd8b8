"""Node-RED side by side (`python -m benchmarks.run --nodered`).

Installs Node-RED 4.1.x and `node-red-contrib-modbus@5.23.3` (the newest that installs here, see
MEASURED.md) with npm into `benchmarks/node-red/` (git-ignored) on first use, writes a flow that
polls the same simulator bulk block at the same interval and publishes to the same kind of private
Mosquitto, runs it headless for the same window and measures it the same way (subscriber count,
/proc CPU and RSS of the `node` process).

The flow, per device (one modbus-client = one TCP connection per simulator, like linetap):
`modbus-read` (holding registers, 124 at a time, i.e. 62 float32; 17 reads cover the 1000 bulk
values 2000..3999) -> `function` (decode the register pairs to float32, big-endian ABCD, and build
`{"device", "start", "count", "agent_ts": [now us], "values": [...]}`) -> `mqtt out` (QoS 1).

Counting: one MQTT message per read; its `count` is the number of float32 values decoded from that
read (registers / 2). So a Node-RED "sample" is one decoded float32 value with no tag name, quality
or per-sample timestamp, and nothing is stored locally before it is sent. linetap's samples carry
tag, value, quality, reason and timestamps, are committed to DuckDB first, and linetap also reads the
12 station tags (with the unit capture) per device.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from linetap.simulators.net import free_port

from .common import Mosquitto, ProcWatch, Subscriber, percentile, stop_process
from .harness import ROOT, TOPIC_ROOT, Child, Result
from .modbus_e2e import ModbusScenario, run_modbus

NR_DIR = ROOT / "benchmarks" / "node-red"
MODBUS_PKG = "node-red-contrib-modbus@5.23.3"
NODE_RED_PKG = "node-red@~4.1"
REGS_PER_READ = 124


def install(log=print) -> Path:
    red = NR_DIR / "node_modules" / "node-red" / "red.js"
    contrib = NR_DIR / "node_modules" / "node-red-contrib-modbus" / "package.json"
    if red.exists() and contrib.exists():
        return red
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm not found (Node 20 + npm needed for --nodered)")
    NR_DIR.mkdir(parents=True, exist_ok=True)
    pkg = NR_DIR / "package.json"
    if not pkg.exists():
        pkg.write_text(json.dumps({"name": "linetap-bench-node-red", "private": True, "version": "0.0.0"}))
    log(f"  npm install {NODE_RED_PKG} {MODBUS_PKG} into {NR_DIR} (about 30 s cold) ...", flush=True)
    t0 = time.monotonic()
    subprocess.run([npm, "install", "--no-audit", "--no-fund", "--loglevel", "error", NODE_RED_PKG, MODBUS_PKG],
                   cwd=NR_DIR, check=True, timeout=900)
    log(f"  installed in {time.monotonic() - t0:.0f} s", flush=True)
    return red


DECODE_JS = """
const r = msg.payload;
const n = r.length >> 1;
const buf = Buffer.allocUnsafe(4);
const values = new Array(n);
for (let i = 0; i < n; i++) {
  buf.writeUInt16BE(r[2 * i], 0);
  buf.writeUInt16BE(r[2 * i + 1], 2);
  values[i] = buf.readFloatBE(0);
}
msg.payload = JSON.stringify({device: env.get("DEVICE") || msg.topic, start: msg.topic, count: n,
                              agent_ts: [Date.now() * 1000], values: values});
return msg;
"""


def flow(sim_ports: list[int], devices: int, bulk: int, interval_ms: int, broker_port: int) -> list[dict]:
    nodes: list[dict] = [{"id": "tab1", "type": "tab", "label": "bench", "disabled": False, "info": ""},
                         {"id": "broker1", "type": "mqtt-broker", "name": "bench", "broker": "127.0.0.1",
                          "port": str(broker_port), "clientid": "nodered-bench", "autoConnect": True, "usetls": False,
                          "protocolVersion": "4", "keepalive": "30", "cleansession": True,
                          "birthTopic": "", "closeTopic": "", "willTopic": ""}]
    for d in range(devices):
        dev = f"dev{d}"
        client = f"client{d}"
        nodes.append({
            "id": client, "type": "modbus-client", "name": dev, "clienttype": "tcp", "bufferCommands": True,
            "stateLogEnabled": False, "queueLogEnabled": False, "failureLogEnabled": False,
            "tcpHost": "127.0.0.1", "tcpPort": str(sim_ports[d % len(sim_ports)]), "tcpType": "DEFAULT",
            "serialPort": "/dev/ttyUSB", "serialType": "RTU-BUFFERD", "serialBaudrate": "9600",
            "serialDatabits": "8", "serialStopbits": "1", "serialParity": "none", "serialConnectionDelay": "100",
            "serialAsciiResponseStartDelimiter": "0x3A", "unit_id": "1", "commandDelay": "1",
            "clientTimeout": "1000", "reconnectOnTimeout": True, "reconnectTimeout": "2000",
            "parallelUnitIdsAllowed": True})
        fn = f"decode{d}"
        out = f"mqtt{d}"
        nodes.append({"id": fn, "type": "function", "z": "tab1", "name": f"decode {dev}", "func": DECODE_JS,
                      "outputs": 1, "noerr": 0, "initialize": "", "finalize": "", "libs": [],
                      "x": 400, "y": 40 + 60 * d, "wires": [[out]]})
        nodes.append({"id": out, "type": "mqtt out", "z": "tab1", "name": "", "topic":
                      f"{TOPIC_ROOT}/nodered/{dev}/telemetry", "qos": "1", "retain": "false", "respTopic": "",
                      "contentType": "", "userProps": "", "correl": "", "expiry": "", "broker": "broker1",
                      "x": 600, "y": 40 + 60 * d, "wires": []})
        regs = 2 * bulk
        k = 0
        for start in range(0, regs, REGS_PER_READ):
            qty = min(REGS_PER_READ, regs - start)
            nodes.append({
                "id": f"read{d}_{k}", "type": "modbus-read", "z": "tab1", "name": "", "topic": dev,
                "showStatusActivities": False, "logIOActivities": False, "showErrors": False,
                "showWarnings": False, "unitid": "1", "dataType": "HoldingRegister", "adr": str(2000 + start),
                "quantity": str(qty), "rate": str(interval_ms), "rateUnit": "ms", "delayOnStart": False,
                "startDelayTime": "", "server": client, "useIOFile": False, "ioFile": "", "useIOForPayload": False,
                "emptyMsgOnFail": False, "x": 150, "y": 40 + 60 * d, "wires": [[fn], []]})
            k += 1
    return nodes


class ModbusServers(Protocol):
    """What the flow reads from: started on construction, `ports()` once they listen."""

    pids: list[int]

    def ports(self) -> list[int]: ...

    def stop(self) -> None: ...


class StationSims:
    """`count` pymodbus station simulators (`benchmarks.procs sim`); the devices share them round-robin."""

    def __init__(self, wd: Path, count: int) -> None:
        self.children = [Child(["sim", "--seed", str(i + 1)], wd / f"sim{i}.log") for i in range(count)]

    @property
    def pids(self) -> list[int]:
        return [c.pid for c in self.children]

    def ports(self) -> list[int]:
        return [c.ready()["port"] for c in self.children]

    def stop(self) -> None:
        for c in self.children:
            c.terminate()


def run_nodered(sc: ModbusScenario, work: Path, max_sims: int, log=print,
                servers: Callable[[Path], ModbusServers] | None = None) -> Result:
    """The flow against `servers(run dir)` (default: the station simulators, at most `max_sims`)."""
    red = install(log)
    wd = work / f"nodered-{sc.name}"
    wd.mkdir(parents=True, exist_ok=True)
    sims = servers(wd) if servers else StationSims(wd, max(1, min(sc.devices, max_sims)))
    broker = Mosquitto(wd / "broker")
    sub = proc = None
    try:
        broker.start()
        ports = sims.ports()
        sub = Subscriber(broker.host, broker.port, TOPIC_ROOT, watch_tag=None).start()
        (wd / "flows.json").write_text(json.dumps(flow(ports, sc.devices, sc.tags, sc.interval_ms, broker.port)))
        ui = free_port()
        (wd / "settings.js").write_text(
            "module.exports = {\n"
            f"  uiHost: '127.0.0.1', uiPort: {ui}, userDir: {json.dumps(str(NR_DIR))},\n"
            f"  flowFile: {json.dumps(str(wd / 'flows.json'))}, credentialSecret: false,\n"
            "  logging: {console: {level: 'warn', metrics: false, audit: false}},\n"
            "  editorTheme: {projects: {enabled: false}}, telemetry: {enabled: false},\n"
            "};\n")
        logf = open(wd / "node-red.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(["node", str(red), "-s", str(wd / "settings.js")], cwd=NR_DIR,
                                stdout=logf, stderr=subprocess.STDOUT, env=dict(os.environ))
        logf.close()
        t0 = time.monotonic()
        while sub.samples() == 0:
            if time.monotonic() - t0 > 60 or proc.poll() is not None:
                raise RuntimeError(f"Node-RED delivered nothing: {(wd / 'node-red.log').read_text()[-3000:]}")
            time.sleep(0.1)
        first = time.monotonic() - t0
        time.sleep(sc.warmup)
        watch = ProcWatch({"nodered": [proc.pid], "sims": sims.pids, "broker": [broker.pid],
                           "bench": [os.getpid()]}).start()
        s0, m0, _ = sub.snapshot_marks()
        time.sleep(sc.seconds)
        s1, m1, _ = sub.snapshot_marks()
        elapsed = watch.stop()
        lat = sub.telemetry_latency_ms(m0, m1)
        offered = sc.devices * sc.tags * 1000 / sc.interval_ms
        return Result("nodered", f"node-red-{sc.devices}x{sc.tags}@{sc.interval_ms}", {
            "devices": sc.devices, "tags": sc.tags, "interval_ms": sc.interval_ms, "offered": offered,
            "delivered": (s1 - s0) / elapsed, "messages_per_s": (m1 - m0) / elapsed, "first_sample_s": round(first, 2),
            "cpu_agent": watch.cpu["nodered"], "cpu_sims": watch.cpu["sims"], "cpu_broker": watch.cpu["broker"],
            "cpu_bench": watch.cpu["bench"], "rss_agent_max": watch.rss_max("nodered"),
            "rss_agent_mean": watch.rss_mean("nodered"), "hwm_agent": watch.hwm["nodered"],
            "read_to_sub_p50": percentile(lat, 50), "read_to_sub_p99": percentile(lat, 99),
            "window_s": round(elapsed, 2)})
    finally:
        if sub is not None:
            sub.close()
        if proc is not None:
            stop_process(proc, grace=10)
        sims.stop()
        broker.stop()


def compare(sc: ModbusScenario, work: Path, max_sims: int, results: list[Result], log=print) -> list[Result]:
    """linetap and Node-RED on the same setting, one after the other, in one invocation."""
    log(f"- Node-RED side by side: {sc.devices} devices x {sc.tags} tags @ {sc.interval_ms} ms", flush=True)
    install(log)
    lt = run_modbus(ModbusScenario(f"linetap-vs-{sc.devices}x{sc.tags}@{sc.interval_ms}", sc.devices, sc.tags, sc.interval_ms, sc.seconds), work, max_sims)
    log(f"  linetap {lt.values['delivered']:,.0f} samples/s, {lt.values['cpu_agent']:.2f} cores", flush=True)
    nr = run_nodered(sc, work, max_sims, log)
    log(f"  Node-RED {nr.values['delivered']:,.0f} samples/s, {nr.values['cpu_agent']:.2f} cores", flush=True)
    a, b = lt.values, nr.values
    per_a = a["cpu_agent"] / a["delivered"] * 1e6 if a["delivered"] else None
    per_b = b["cpu_agent"] / b["delivered"] * 1e6 if b["delivered"] else None
    cmp_ = Result("compare", f"{sc.devices} x {sc.tags} @ {sc.interval_ms} ms, {sc.seconds:g} s each", {
        "samples/s (linetap / Node-RED)": f"{a['delivered']:,.0f} / {b['delivered']:,.0f} = "
                                          f"{a['delivered'] / max(b['delivered'], 1e-9):.2f}x",
        "CPU cores (linetap / Node-RED)": f"{a['cpu_agent']:.2f} / {b['cpu_agent']:.2f} = "
                                          f"{a['cpu_agent'] / max(b['cpu_agent'], 1e-9):.2f}",
        "CPU us per delivered sample": f"{_n(per_a)} / {_n(per_b)} = "
                                       f"{(per_a / per_b) if per_a and per_b else float('nan'):.2f}",
        "RSS max MB": f"{a['rss_agent_max'] / 1e6:.0f} / {b['rss_agent_max'] / 1e6:.0f}",
        "read -> subscriber p50/p99 ms": f"{_n(a['tel_agent_p50'])}/{_n(a['tel_agent_p99'])} / "
                                         f"{_n(b['read_to_sub_p50'])}/{_n(b['read_to_sub_p99'])}",
        "Node-RED messages/s": f"{b['messages_per_s']:,.0f} (one per 124-register read)",
        "counting": "Node-RED: float32 values decoded per read (registers/2); linetap: samples (tag, value, "
                    "quality, timestamps) in the telemetry messages; linetap reads 1012 tags/device "
                    "(1000 bulk + 12 station tags), Node-RED the 1000 bulk values",
    })
    return [lt, nr, cmp_]


def _n(x) -> str:
    return "-" if x is None else f"{x:.1f}"
