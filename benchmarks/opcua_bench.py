"""OPC UA end to end: K asyncua simulator processes -> agent (subscriptions) -> DuckDB -> MQTT -> subscriber.

Each simulator (`python -m benchmarks.procs sim-opcua`) serves N bulk Double items that all change
every `interval` s; the agent has one `opcua` device per simulator in `subscribe` mode with the N
items as tags (`nsu=<namespace>;s=Bulk.B00000` ...), publishing and sampling interval = the change
interval, a server-side queue of `QUEUE_SIZE` per item (a change that lands just before a publish
and the next one just after must both survive). The driver takes whole PublishResponses in its own
callback into an unbounded queue: the asyncua iterator queue (1000, drops silently, MEASURED.md)
is not in the path.

Rates: **offered/s** = value writes the simulators made over the window (from their status
files; a CPU-bound simulator falls behind the nominal K x N / interval), **read/s** = samples
the agent's drivers produced (agent status file), **delivered/s** = samples at the subscriber.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import Mosquitto, ProcWatch, Subscriber, percentile
from .harness import AGENT_ID, TOPIC_ROOT, Child, Result, pyspy_attach, read_status, start_agent, status_rates

QUEUE_SIZE = 4  # per monitored item, at the server: changes kept between two publishes
# The simulators run at a lower CPU priority: on 2 cores, K busy simulator processes would otherwise
# get K/(K+1) of the CPU and starve the agent (the thing measured); niced, they offer what is left.
SIM_NICE = 10


@dataclass
class OpcUaScenario:
    name: str
    sims: int  # simulator processes = agent devices
    items: int  # bulk items per simulator, all changing every interval
    interval_ms: int
    seconds: float
    warmup: float = 3.0


def opcua_scenarios(smoke: bool, seconds: float) -> list[OpcUaScenario]:
    if smoke:
        return [OpcUaScenario("opcua-smoke", 1, 200, 100, max(1.0, seconds - 1.0), warmup=0.5)]
    return [
        OpcUaScenario("opcua-15k", 1, 1500, 100, seconds),  # the change rate an unmodified asyncua server tops out at
        OpcUaScenario("opcua-1sim-max", 1, 4000, 100, seconds),  # one simulator flat out: offered = its maximum
        OpcUaScenario("opcua-40k", 4, 1000, 100, seconds),  # the target, over 4 simulator processes
        OpcUaScenario("opcua-60k", 4, 1500, 100, seconds),  # a ceiling: the 2 cores are full
    ]


def opcua_profile_scenario(seconds: float) -> OpcUaScenario:
    return OpcUaScenario("opcua-40k", 4, 1000, 100, seconds)


def opcua_config(workdir: Path, broker: Mosquitto, endpoints: list[str], namespace: str, items: int,
                 interval_ms: int) -> dict[str, Any]:
    tags = [{"name": f"b{i:05d}", "node": f"nsu={namespace};s=Bulk.B{i:05d}"} for i in range(items)]
    devices = [{
        "protocol": "opcua", "name": f"opc{k}", "endpoint": ep, "mode": "subscribe",
        "publishing_interval": f"{interval_ms}ms", "sampling_interval": f"{interval_ms}ms",
        "queue_size": QUEUE_SIZE, "read_units": False, "timeout": "10s", "keepalive": "5s", "tags": tags,
    } for k, ep in enumerate(endpoints)]
    return {
        "agent": {"id": AGENT_ID, "enterprise": "acme", "site": "bench", "area": "area", "line": "line"},
        "mqtt": {"host": broker.host, "port": broker.port, "keepalive": "10s"},
        "buffer": {"path": str(workdir / "buffer.duckdb")},
        "logging": {"format": "json", "level": "warning"},
        "reconnect": {"min": "200ms", "max": "2s"},
        "devices": devices,
    }


def _read_json(path: Path) -> dict[str, Any] | None:
    with contextlib.suppress(OSError, ValueError):
        return json.loads(path.read_text())
    return None


def run_opcua(sc: OpcUaScenario, work: Path, profile: bool = False, log=print) -> Result:
    """One run; with `profile`, py-spy samples the agent and the first simulator during the window
    (`agent-profile.txt`, `sim-profile.txt` in the run's directory; their CPU includes py-spy's)."""
    wd = work / sc.name
    wd.mkdir(parents=True, exist_ok=True)
    sims: list[Child] = []
    broker = Mosquitto(wd / "broker")
    sub = agent = None
    res = Result("opcua", sc.name)
    try:
        for k in range(sc.sims):
            sims.append(Child(["sim-opcua", "--seed", str(k + 1), "--nice", str(SIM_NICE), "--bulk", str(sc.items),
                               "--bulk-interval", str(sc.interval_ms / 1000), "--status", str(wd / f"sim{k}.status.json"),
                               "--result", str(wd / f"sim{k}.json")], wd / f"sim{k}.log"))
        broker.start()
        infos = [s.ready(60) for s in sims]
        sub = Subscriber(broker.host, broker.port, TOPIC_ROOT, watch_tag=None).start()
        cfg = opcua_config(wd, broker, [i["endpoint"] for i in infos], infos[0]["namespace"], sc.items,
                           sc.interval_ms)
        (wd / "config.json").write_text(json.dumps(cfg))
        agent, first_sample_s = start_agent(wd, sub, timeout=60)
        time.sleep(sc.warmup)
        pids = {"agent": [agent.pid], "sims": [s.pid for s in sims], "broker": [broker.pid], "bench": [os.getpid()]}
        spies = []
        if profile:
            spies = [pyspy_attach(agent.pid, sc.seconds, wd / "agent-profile.txt"),
                     pyspy_attach(sims[0].pid, sc.seconds, wd / "sim-profile.txt")]
        sim0 = [_read_json(wd / f"sim{k}.status.json") for k in range(sc.sims)]
        st0 = read_status(cfg)
        s0, m0, _ = sub.snapshot_marks()
        watch = ProcWatch(pids).start()
        time.sleep(sc.seconds)
        s1, m1, _ = sub.snapshot_marks()
        elapsed = watch.stop()
        st1 = read_status(cfg)
        sim1 = [_read_json(wd / f"sim{k}.status.json") for k in range(sc.sims)]
        for spy in spies:
            with contextlib.suppress(Exception):
                spy.wait(30)
        agent_rc = agent.terminate()
        for s in sims:
            s.terminate()
        agent_result = _read_json(wd / "agent.json") or {}
        v = res.values
        v.update(sims=sc.sims, items=sc.items, interval_ms=sc.interval_ms,
                 nominal=sc.sims * sc.items * 1000 / sc.interval_ms, window_s=round(elapsed, 2),
                 first_sample_s=round(first_sample_s, 2), delivered=(s1 - s0) / elapsed, agent_rc=agent_rc,
                 agent_stop="HUNG on SIGTERM (killed; task dump in agent.log)" if agent.hung else "clean",
                 profiled=profile)
        # offered: the simulators' own count of value writes over (about) the window
        if all(sim0) and all(sim1):
            v["offered"] = sum((b["bulk_writes"] - a["bulk_writes"]) / max(1e-9, b["at"] - a["at"])
                               for a, b in zip(sim0, sim1, strict=True))
            v["sim_late_rounds"] = sum(b["bulk_late"] - a["bulk_late"] for a, b in zip(sim0, sim1, strict=True))
        for k in pids:
            v[f"cpu_{k}"] = watch.cpu[k]
        v["rss_agent_max"] = watch.rss_max("agent")
        v["hwm_agent"] = watch.hwm["agent"]
        v["rss_sims_max"] = watch.rss_max("sims")
        v["ru_maxrss_agent"] = agent_result.get("ru_maxrss")
        v.update(status_rates(st0, st1))
        with sub._lock:
            tel = sub.rx.telemetry_lat[m0:m1]
            v["duplicates"] = sub.rx.duplicates
        lat = [(t - a / 1e6) * 1000 for t, a, _ in tel]
        v["tel_agent_p50"], v["tel_agent_p99"] = percentile(lat, 50), percentile(lat, 99)
        if v.get("offered") and v.get("cpu_agent") is not None and v.get("read"):
            v["agent_us_per_sample"] = v["cpu_agent"] * 1e6 / v["read"]
        if profile:
            from .report import summarize_profile

            for who in ("agent", "sim"):
                raw = wd / f"{who}-profile.txt"
                if raw.exists():
                    v[f"{who}_profile"] = str(raw)
                    (wd / f"{who}-profile-summary.txt").write_text(summarize_profile(raw, top=15))
        return res
    finally:
        if sub is not None:
            sub.close()
        if agent is not None:
            agent.terminate()
        for s in sims:
            s.terminate()
        broker.stop()


def print_opcua_table(results: list[Result], out=print) -> None:
    opc = [r for r in results if r.kind == "opcua"]
    if not opc:
        return
    out("\n### OPC UA end to end: asyncua simulators -> agent (subscriptions) -> DuckDB -> MQTT -> subscriber")
    out("| run | sims x items @ interval | nominal/s | offered/s (sims wrote) | read into buffer/s | delivered/s | "
        "agent CPU (cores) | agent µs/sample | agent RSS max / peak (MB) | sims CPU | broker CPU | "
        "telemetry agent read -> subscriber p50 / p99 (ms) |")
    out("|---|---|---|---|---|---|---|---|---|---|---|---|")

    def f(x: Any, fmt: str = "{:,.0f}") -> str:
        return "-" if x is None else fmt.format(x)

    def mb(x: Any) -> str:
        return "-" if not x else f"{x / 1e6:.0f}"

    for r in opc:
        v = r.values
        out(f"| {r.name}{' (py-spy)' if v.get('profiled') else ''} | {v['sims']} x {v['items']} @ "
            f"{v['interval_ms']} ms | {f(v['nominal'])} | {f(v.get('offered'))} | {f(v.get('read'))} | "
            f"{f(v['delivered'])} | {f(v['cpu_agent'], '{:.2f}')} | {f(v.get('agent_us_per_sample'), '{:.1f}')} | "
            f"{mb(v['rss_agent_max'])} / {mb(v['hwm_agent'])} | {f(v.get('cpu_sims'), '{:.2f}')} | "
            f"{f(v.get('cpu_broker'), '{:.2f}')} | {f(v.get('tel_agent_p50'))} / {f(v.get('tel_agent_p99'))} |")
    for r in opc:
        v = r.values
        if v.get("agent_stop") not in (None, "clean"):
            out(f"- {r.name}: agent {v['agent_stop']}")
        if v.get("sim_late_rounds"):
            out(f"- {r.name}: the simulators fell a whole interval behind and skipped {v['sim_late_rounds']} "
                "change rounds (offered < nominal)")
        if v.get("device_states") and v["device_states"] != ["connected"]:
            out(f"- {r.name}: device states at the end: {', '.join(v['device_states'])}")
