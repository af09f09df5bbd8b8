"""Soak: the fault-injection tests, for longer. Prints what was produced, delivered, duplicated, lost.

    python -m benchmarks.soak --minutes 10

Runs a private Mosquitto, the Modbus station simulator (`linetap simulate modbus --speed 8`), the
agent (`linetap run`) and a subscriber that writes everything it receives to a JSONL capture.
Every 15-40 s one fault, at random: `kill -9` of the agent (then restart), the broker stopped for
3-10 s, or the simulator stopped for 2-6 s. At the end the agent is stopped cleanly, restarted
to drain, and `linetap verify` checks the capture against the buffer.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from linetap.agent.verify import verify
from linetap.buffers import DuckDBBuffer
from linetap.config.loader import load_config
from linetap.simulators import BULK_ADDRESS

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "linetap.agent.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def vm_hwm_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Soak:
    def __init__(self, work: Path, bulk: int) -> None:
        self.work = work
        self.broker_port = free_port()
        self.sim_port = free_port()
        (work / "mosquitto.conf").write_text(
            f"listener {self.broker_port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n"
            f"persistence true\npersistence_location {work}/\nautosave_interval 1\n")
        example = load_config(ROOT / "config/examples/heat-sealer-modbus.yaml")
        doc = example.model_dump(mode="json", exclude_none=True)
        doc["devices"][0].update({"port": self.sim_port, "poll_interval": "50ms"})
        doc["devices"][0]["tags"] += [{"name": f"bulk_{i}", "address": BULK_ADDRESS + 2 * i, "type": "float32"}
                                      for i in range(bulk)]
        doc["mqtt"].update({"host": "127.0.0.1", "port": self.broker_port})
        doc["buffer"].update({"path": str(work / "buffer.duckdb")})
        doc["logging"] = {"format": "json", "level": "warning"}
        doc["reconnect"] = {"min": "200ms", "max": "2s"}
        self.config_path = work / "line.yaml"
        self.config_path.write_text(json.dumps(doc))
        self.agent_id = doc["agent"]["id"]
        self.broker: subprocess.Popen | None = None
        self.sim: subprocess.Popen | None = None
        self.agent: subprocess.Popen | None = None
        self.max_rss = 0.0
        self.faults: dict[str, int] = {"kill -9 agent": 0, "broker down": 0, "simulator down": 0}
        self.capture = open(work / "capture.jsonl", "wb")  # noqa: SIM115
        self.lock = threading.Lock()
        self.received = 0

    def start_broker(self) -> None:
        self.broker = subprocess.Popen(["mosquitto", "-c", str(self.work / "mosquitto.conf")],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.broker_port)

    def start_sim(self) -> None:
        self.sim = subprocess.Popen([*CLI, "simulate", "modbus", "--port", str(self.sim_port), "--speed", "8",
                                     "--out-of-limit", "0.2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.sim_port)

    def start_agent(self) -> None:
        self.agent = subprocess.Popen([*CLI, "run", str(self.config_path)], stdout=subprocess.DEVNULL,
                                      stderr=open(self.work / "agent.log", "ab"))  # noqa: SIM115

    def sample_rss(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.max_rss = max(self.max_rss, vm_hwm_mb(self.agent.pid))

    def subscribe(self) -> mqtt.Client:
        def on_message(_c, _u, msg):
            if msg.topic.endswith(("/telemetry", "/units", "/events")):
                with self.lock:
                    self.capture.write(msg.payload + b"\n")
                    self.received += 1

        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="soak-mes", clean_session=False)
        sub.max_inflight_messages_set(100)
        sub.on_message = on_message
        sub.on_connect = lambda c, *_: c.subscribe("#", qos=1)
        sub.reconnect_delay_set(0.1, 1)
        sub.connect("127.0.0.1", self.broker_port)
        sub.loop_start()
        return sub

    def fault(self, rng: random.Random) -> None:
        kind = rng.choice(list(self.faults))
        self.faults[kind] += 1
        print(f"  {time.strftime('%H:%M:%S')} fault: {kind}", flush=True)
        if kind == "kill -9 agent":
            self.sample_rss()
            self.agent.kill()
            self.agent.wait()
            time.sleep(rng.uniform(0.5, 2))
            self.start_agent()
        elif kind == "broker down":
            self.broker.terminate()
            self.broker.wait()
            time.sleep(rng.uniform(3, 10))
            self.start_broker()
        else:
            self.sim.terminate()
            self.sim.wait()
            time.sleep(rng.uniform(2, 6))
            self.start_sim()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--bulk", type=int, default=200, help="extra float32 tags (load)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="linetap-soak-"))
    soak = Soak(work, args.bulk)
    rng = random.Random(args.seed)
    soak.start_broker()
    soak.start_sim()
    sub = soak.subscribe()
    soak.start_agent()
    started = time.monotonic()
    end = started + args.minutes * 60
    print(f"soak for {args.minutes:g} min in {work}", flush=True)
    try:
        while time.monotonic() < end:
            next_fault = time.monotonic() + rng.uniform(15, 40)
            while time.monotonic() < min(next_fault, end):
                soak.sample_rss()
                time.sleep(0.5)
            if time.monotonic() < end:
                soak.fault(rng)
        # Clean stop, then a drain run until nothing is pending.
        soak.sample_rss()
        soak.agent.send_signal(signal.SIGTERM)
        soak.agent.wait(60)
        soak.sim.terminate()
        soak.start_agent()
        buf_path = work / "buffer.duckdb"
        time.sleep(5)
        soak.agent.send_signal(signal.SIGTERM)
        soak.agent.wait(60)
        time.sleep(2)
    finally:
        for p in (soak.agent, soak.sim):
            if p is not None and p.poll() is None:
                p.kill()
        sub.loop_stop()
        soak.capture.close()
        if soak.broker is not None:
            soak.broker.terminate()

    buf = DuckDBBuffer(buf_path, soak.agent_id)
    produced = {s: buf.last_seq(s) for s in ("telemetry", "units", "events")}
    pending = {s.stream: s.pending for s in buf.stats("mqtt")}
    buf.close()
    report = verify([work / "capture.jsonl"])
    minutes = (time.monotonic() - started) / 60
    print(f"\nsoak: {minutes:.1f} min, faults: " + ", ".join(f"{k} x{v}" for k, v in soak.faults.items()))
    print(f"{'stream':<10} {'produced':>10} {'delivered':>10} {'duplicates':>10} {'unsent':>8} {'lost':>6}")
    for stream, last in produced.items():
        c = report.counts.get(f"{soak.agent_id}/{stream}", {"unique": 0, "duplicates": 0})
        lost = last - c["unique"] - pending.get(stream, 0)
        print(f"{stream:<10} {last:>10} {c['unique']:>10} {c['duplicates']:>10} {pending.get(stream, 0):>8} "
              f"{lost:>6}")
    gaps = [f for f in report.findings if f.kind == "missing"]
    print(f"gap findings (missing, not covered by a gap event): {len(gaps)}; other findings: "
          f"{len(report.findings) - len(gaps)}")
    for f in report.findings[:10]:
        print(f"  {f}")
    print(f"agent peak RSS (VmHWM, max over its runs): {soak.max_rss:.0f} MB")


if __name__ == "__main__":
    main()
