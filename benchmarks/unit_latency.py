"""Latency of unit records and non-conformance events: simulator truth -> message at the broker.

    python -m benchmarks.unit_latency --units 1000

The station simulator runs in this process on a wall clock (model time = (now - T0) * speed), the
agent runs as `linetap run` in its own process, a subscriber here timestamps every message. For
each unit:
- unit record: latency = receipt - the cycle end at the simulator (cycle_active falls);
- non-conformance raised during the cycle (a value above its high limit): receipt - the first
  moment the simulator served a value beyond the limit (found by replaying the seeded model on a
  fine time grid);
- non-conformance judged at the end of the unit (low side, dwell): receipt - the cycle end.
Both include the poll interval (the agent can only see a value at its next poll).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt

from linetap.config.loader import load_config
from linetap.simulators import ModbusStationServer, StationModel
from linetap.simulators.net import free_port
from linetap.simulators.station import PRESSURE_LIMITS, TEMPERATURE_LIMITS

ROOT = Path(__file__).resolve().parents[1]


def _crossings(params: dict, horizon: float, grid: float = 0.002) -> dict[str, float]:
    """serial -> first model time a served value was above its high limit (replaying the seeded model)."""
    model = StationModel(**params)
    first: dict[str, float] = {}
    t = 0.0
    while t < horizon:
        snap = model.step(t)
        if snap.cycle_active and snap.serial not in first and (
                snap.temperature > TEMPERATURE_LIMITS.high or snap.pressure > PRESSURE_LIMITS.high):
            first[snap.serial] = t
        t += grid
    return first


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--units", type=int, default=1000)
    ap.add_argument("--speed", type=float, default=10.0, help="model seconds per real second")
    ap.add_argument("--poll", default="20ms")
    ap.add_argument("--out-of-limit", type=float, default=0.3)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="linetap-latency-"))
    broker_port = free_port()
    (work / "mosquitto.conf").write_text(f"listener {broker_port} 127.0.0.1\nallow_anonymous true\n"
                                         "max_queued_messages 0\n")
    broker = subprocess.Popen(["mosquitto", "-c", str(work / "mosquitto.conf")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)

    params = {"seed": 21, "cycle_time": 2.0, "idle_time": 0.5, "out_of_limit_share": args.out_of_limit,
              "keep_units": args.units + 100}
    model = StationModel(**params)
    t0 = time.time() + 1.0
    speed = args.speed
    sim = ModbusStationServer(model, port=0, clock=lambda: max(0.0, (time.time() - t0) * speed))
    await sim.start()

    example = load_config(ROOT / "config/examples/heat-sealer-modbus.yaml")
    doc = example.model_dump(mode="json", exclude_none=True)
    doc["devices"][0].update({"port": sim.port, "poll_interval": args.poll})
    doc["mqtt"].update({"host": "127.0.0.1", "port": broker_port})
    doc["buffer"].update({"path": str(work / "buffer.duckdb"), "flush_interval": "200ms"})
    doc["logging"] = {"format": "json", "level": "warning"}
    (work / "line.yaml").write_text(json.dumps(doc))

    received: list[tuple[float, dict]] = []
    lock = threading.Lock()

    def on_message(_c, _u, msg):
        now = time.time()
        if msg.topic.endswith(("/units", "/events")):
            with lock:
                received.append((now, orjson.loads(msg.payload)))

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="latency-bench", clean_session=False)
    sub.on_message = on_message
    sub.on_connect = lambda c, *_: c.subscribe("#", qos=1)
    sub.connect("127.0.0.1", broker_port)
    sub.loop_start()

    agent = subprocess.Popen([sys.executable, "-m", "linetap.agent.cli", "run", str(work / "line.yaml")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + args.units * (2.5 / speed) * 1.5 + 60
        while time.time() < deadline:
            with lock:
                n = sum(1 for _, d in received if d.get("stream") == "units")
            if n >= args.units:
                break
            await asyncio.sleep(0.5)
            print(f"\r{n}/{args.units} units", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
        sub.loop_stop()
        await sim.stop()
        broker.terminate()

    truth = {u.serial: u for u in model.completed_units}
    horizon = max(u.ended_at for u in truth.values()) + 1
    crossing = _crossings(params, horizon)

    def wall(model_t: float) -> float:
        return t0 + model_t / speed

    unit_lat, nc_during, nc_end = [], [], []
    for recv, doc in received:
        body = doc["body"]
        u = truth.get(body.get("serial"))
        if u is None:
            continue
        if doc["stream"] == "units":
            unit_lat.append(recv - wall(u.ended_at))
        elif body.get("kind") == "nonconformance":
            if body.get("during_cycle") and body["serial"] in crossing:
                nc_during.append(recv - wall(crossing[body["serial"]]))
            elif not body.get("during_cycle"):
                nc_end.append(recv - wall(u.ended_at))

    print(f"unit latency, simulator -> broker (poll {args.poll}, flush 200ms, speed x{speed:g}, "
          f"{os.cpu_count()} cores)")
    print(f"{'what':<44} {'n':>6} {'median ms':>10} {'p99 ms':>8} {'max ms':>8}")
    for name, vals in (("unit record (from cycle end)", unit_lat),
                       ("non-conformance during cycle (from crossing)", nc_during),
                       ("non-conformance at unit end (from cycle end)", nc_end)):
        if vals:
            ms = [v * 1000 for v in vals]
            print(f"{name:<44} {len(ms):>6} {statistics.median(ms):>10.1f} {_pct(ms, 0.99):>8.1f} {max(ms):>8.1f}")
        else:
            print(f"{name:<44} {0:>6} {'-':>10} {'-':>8} {'-':>8}")


if __name__ == "__main__":
    asyncio.run(main())
