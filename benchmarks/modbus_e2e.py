"""Modbus end to end: station simulators -> agent -> DuckDB -> MQTT -> subscriber, with latencies
against the simulators' ground truth (README.md, "What runs where")."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .common import Mosquitto, ProcWatch, Subscriber, percentile
from .harness import AGENT_ID, TOPIC_ROOT, Child, Result, pyspy_wrap, read_status, start_agent, status_rates

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


def _example() -> tuple[dict[str, Any], dict[str, Any]]:
    """The heat-sealer example's device tags and station capture (config/examples/heat-sealer-modbus.yaml)."""
    from linetap.config.loader import load_config

    with resources.as_file(resources.files("linetap.config") / "examples" / "heat-sealer-modbus.yaml") as p:
        cfg = load_config(p)
    return cfg.devices[0].model_dump(mode="json", exclude_none=True), cfg.stations[0].model_dump(
        mode="json", exclude_none=True)


def line_config(workdir: Path, broker: Mosquitto, sim_ports: list[int], devices: int, tags: int,
                interval_ms: int, stations: bool = True, station_ms: int | None = None,
                with_station_tags: bool = True) -> dict[str, Any]:
    """Device `devN` holds the station tags; with `station_ms` it polls only those, that often, and
    `devN-bulk` (a second connection to the same simulator) polls the bulk tags every `interval_ms`.
    Without `with_station_tags`, `devN` reads only the `tags` bulk float32 tags (a server that is not the
    station simulator)."""
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
                         "tags": [*device["tags"], *bulk] if with_station_tags else bulk})
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
        agent, first_sample_s = start_agent(wd, sub, wrap=pyspy_wrap(profile) if profile is not None else None)
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
        v.update(status_rates(st0, st1))
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
