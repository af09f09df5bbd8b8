"""Soak: the fault-injection tests, for longer. Prints what was produced, delivered, duplicated, lost.

    python -m benchmarks.soak --minutes 10

Runs a private Mosquitto, the Modbus station simulator (`python -m benchmarks.procs sim --speed 4`,
which writes its ground truth at the end), the agent (`linetap run`) and a subscriber that writes
everything it receives to a JSONL capture. Every 15-40 s one fault, at random: `kill -9` of the
agent (then restart), the broker stopped for 3-10 s, the PLC frozen (SIGSTOP) for 2-6 s, or, as
root, the buffer's file system filled for 5-15 s (the buffer lives on a tmpfs the soak mounts).
At the end the agent is stopped cleanly, restarted to drain, `linetap verify` checks the capture,
and every serial the simulator made is looked up among the unit records (`soak_units.py`).
Exit 1 when anything was lost silently: a telemetry seq without a gap event, a unit missing
while the agent could see the station, or a finding of `verify`.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import paho.mqtt.client as mqtt

from benchmarks.soak_units import IN_FLIGHT, check_units
from linetap.buffers import DuckDBBuffer
from linetap.buffers.verify import verify
from linetap.config.loader import load_config
from linetap.simulators import BULK_ADDRESS
from linetap.simulators.net import free_port, wait_port

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "linetap.agent.cli"]
DISK_MB = 96  # the buffer's tmpfs; buffer.max_size is a quarter of it, so only the fault fills it


def vm_hwm_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def mount_tmpfs(folder: Path) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        print("soak: not root, so no tmpfs for the buffer and no disk-full fault", flush=True)
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(folder)],
                       capture_output=True, text=True)
    if r.returncode:
        print(f"soak: cannot mount a tmpfs ({r.stderr.strip()}): no disk-full fault", flush=True)
    return r.returncode == 0


def fill(folder: Path) -> Path:
    """Take every free byte of the file system."""
    filler = folder / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (1 << 20, 65536, 4096, 512, 1):
            block = b"\0" * size
            try:
                while True:
                    os.write(fd, block)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


class Soak:
    def __init__(self, work: Path, bulk: int) -> None:
        self.work = work
        self.disk = work / "buffer disk"
        self.disk_mounted = mount_tmpfs(self.disk)
        self.broker_port = free_port()
        self.sim_port = 0
        (work / "mosquitto.conf").write_text(
            # run as root, mosquitto drops to user `mosquitto`, which cannot write its persistence file
            # here: the subscriber's session (and every message queued for it) would not survive a restart
            f"user {getpass.getuser()}\n"
            f"listener {self.broker_port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n"
            f"persistence true\npersistence_location {work}/\nautosave_interval 1\n")
        example = load_config(ROOT / "config/examples/heat-sealer-modbus.yaml")
        doc = example.model_dump(mode="json", exclude_none=True)
        doc["devices"][0].update({"port": 0, "poll_interval": "50ms"})
        doc["devices"][0]["tags"] += [{"name": f"bulk_{i}", "address": BULK_ADDRESS + 2 * i, "type": "float32"}
                                      for i in range(bulk)]
        doc["mqtt"].update({"host": "127.0.0.1", "port": self.broker_port})
        self.buffer_path = self.disk / "heat-sealer-buffer.duckdb"
        doc["buffer"].update({"path": str(self.buffer_path), "max_size": f"{DISK_MB // 4}MB", "hold_samples": 20_000})
        doc["logging"] = {"format": "json", "level": "warning"}
        doc["reconnect"] = {"min": "200ms", "max": "2s"}
        self.doc = doc
        self.config_path = work / "heat-sealer line.yaml"
        self.agent_id = doc["agent"]["id"]
        self.broker: subprocess.Popen | None = None
        self.sim: subprocess.Popen | None = None
        self.agent: subprocess.Popen | None = None
        self.max_rss = 0.0
        self.faults: dict[str, int] = {"kill -9 agent": 0, "broker down": 0, "PLC frozen": 0}
        if self.disk_mounted:
            self.faults["disk full"] = 0
        self.kills: list[tuple[float, float]] = []  # (killed, agent back) of each kill -9
        self.outages: list[tuple[float, float]] = []  # wall-clock spans the agent could not see the station
        self.capture = open(work / "capture.jsonl", "wb")  # noqa: SIM115
        self.lock = threading.Lock()
        self.received = 0

    def start_broker(self) -> None:
        self.broker = subprocess.Popen(["mosquitto", "-c", str(self.work / "mosquitto.conf")],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.broker_port)

    def start_sim(self) -> None:
        self.sim = subprocess.Popen([sys.executable, "-m", "benchmarks.procs", "sim", "--speed", "4",
                                     "--out-of-limit-share", "0.2", "--truth", str(self.work / "truth.json")],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT)
        self.sim_port = json.loads(self.sim.stdout.readline())["port"]
        self.doc["devices"][0]["port"] = self.sim_port
        self.config_path.write_text(json.dumps(self.doc))

    def start_agent(self, wait: bool = True) -> None:
        """Start the agent; with `wait`, until it has its device (the span until then is an outage)."""
        down_since = time.time()
        self.agent = subprocess.Popen([*CLI, "run", str(self.config_path)], stdout=subprocess.DEVNULL,
                                      stderr=open(self.work / "agent.log", "ab"))  # noqa: SIM115
        status = self.buffer_path.with_name(self.buffer_path.name + ".status.json")
        deadline = time.monotonic() + 30
        while wait and time.monotonic() < deadline and self.agent.poll() is None:
            try:
                doc = json.loads(status.read_text())
                if doc["pid"] == self.agent.pid and all(d["state"] == "connected" for d in doc["devices"].values()):
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        self.outages.append((down_since, time.time()))

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
            killed = time.time()
            self.agent.kill()
            self.agent.wait()
            time.sleep(rng.uniform(0.5, 2))
            self.start_agent()
            self.outages[-1] = (killed, self.outages[-1][1])
            self.kills.append(self.outages[-1])
        elif kind == "broker down":
            self.broker.terminate()
            self.broker.wait()
            time.sleep(rng.uniform(3, 10))
            self.start_broker()
        elif kind == "PLC frozen":
            frozen = time.time()
            self.sim.send_signal(signal.SIGSTOP)
            time.sleep(rng.uniform(2, 6))
            self.sim.send_signal(signal.SIGCONT)
            self.outages.append((frozen, time.time() + 1.0))  # + the agent's reconnect
        else:
            filler = fill(self.disk)
            time.sleep(rng.uniform(5, 15))
            filler.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--bulk", type=int, default=200, help="extra float32 tags (load)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="linetap-soak-"))
    soak = Soak(work, args.bulk)
    rng = random.Random(args.seed)
    print(f"soak for {args.minutes:g} min in {work}", flush=True)
    sub = None
    try:
        soak.start_broker()
        soak.start_sim()
        sub = soak.subscribe()
        soak.start_agent()
        started = time.monotonic()
        end = started + args.minutes * 60
        while time.monotonic() < end:
            next_fault = time.monotonic() + rng.uniform(15, 40)
            while time.monotonic() < min(next_fault, end):
                soak.sample_rss()
                time.sleep(0.5)
            if time.monotonic() < end:
                soak.fault(rng)
        # Clean stop, the simulator's ground truth, then a drain run until nothing is pending.
        soak.sample_rss()
        soak.agent.send_signal(signal.SIGTERM)
        soak.agent.wait(60)
        soak.sim.send_signal(signal.SIGTERM)
        soak.sim.wait(30)
        soak.start_agent(wait=False)
        time.sleep(5)
        soak.agent.send_signal(signal.SIGTERM)
        soak.agent.wait(60)
        time.sleep(2)
        minutes = (time.monotonic() - started) / 60
    finally:
        for p in (soak.agent, soak.sim):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
        if sub is not None:
            sub.loop_stop()
        soak.capture.close()
        if soak.broker is not None:
            soak.broker.terminate()
    try:
        sys.exit(report(soak, minutes))
    finally:
        if soak.disk_mounted:
            subprocess.run(["umount", "-l", str(soak.disk)], check=False)


def report(soak: Soak, minutes: float) -> int:
    """Print the table; 0 only when nothing was lost silently."""
    buf = DuckDBBuffer(soak.buffer_path, soak.agent_id)
    produced = {s: buf.last_seq(s) for s in ("telemetry", "units", "events")}
    pending = {s.stream: s.pending for s in buf.stats("mqtt")}
    buf.close()
    capture = soak.work / "capture.jsonl"
    checked = verify([capture])
    units = check_units(soak.work / "truth.json", capture, soak.outages, soak.kills)
    kinds: Counter = Counter()
    gaps: dict[int, int] = {}  # seq -> samples named; from the capture (the size cap purges delivered events)
    for line in capture.read_bytes().splitlines():
        doc = json.loads(line)
        if doc.get("stream") == "events":
            body = doc["body"]
            kinds[body["kind"] + (f" {body['alarm']}" if body.get("alarm") else "")] += 1
            if body["kind"] == "gap":
                gaps[doc["seq"]] = body["count"]
    counts = {stream: checked.counts.get(f"{soak.agent_id}/{stream}", {"unique": 0, "duplicates": 0})
              for stream in produced}
    silent = [f for f in checked.findings if f.kind == "missing"]
    rows = [("minutes", f"{minutes:.1f}"),
            ("faults", ", ".join(f"{k} x{v}" for k, v in soak.faults.items()))]
    for stream, last in produced.items():
        c = counts[stream]
        lost = last - c["unique"] - pending.get(stream, 0)
        note = f" ({sum(gaps.values())} of them named by {len(gaps)} gap events)" if stream == "telemetry" else ""
        rows.append((f"{stream}: produced / delivered / duplicates / unsent / not delivered",
                     f"{last} / {c['unique']} / {c['duplicates']} / {pending.get(stream, 0)} / {lost}{note}"))
    rows += [
        ("telemetry seqs missing without a gap event (silent)", str(len(silent))),
        ("units the simulator made (first..last serial seen)", str(units.expected)),
        ("... with exactly one unit record", str(units.recorded - len(units.doubled))),
        ("... made entirely while the agent or the PLC was down (cannot be seen)",
         f"{len(units.missing_in_outage)} {units.missing_in_outage[:5]}"),
        (f"... started < {IN_FLIGHT:g} s before a kill -9, ended before the agent was back (nothing committed yet)",
         f"{len(units.lost_in_flight)} {units.lost_in_flight[:5]}"),
        ("... missing otherwise (silent hole)", f"{len(units.missing)} {units.missing[:5]}"),
        ("... with two unit records", f"{len(units.doubled)} {units.doubled[:5]}"),
        ("unit records by verdict", ", ".join(f"{k} {v}" for k, v in sorted(units.verdicts.items()))),
        ("incomplete, by reason", ", ".join(f"{k} {v}" for k, v in units.reasons.most_common()) or "-"),
        ("marked", ", ".join(f"{k} {v}" for k, v in units.marks.items()) or "-"),
        ("records not in the simulator's truth (open at its stop)", ", ".join(units.not_in_truth) or "-"),
        ("events by kind", ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))),
        ("linetap verify", "ok" if checked.ok else f"{len(checked.findings)} findings"),
        ("agent peak RSS (VmHWM, max over its runs)", f"{soak.max_rss:.0f} MB"),
    ]
    print("\n| soak | |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    for f in checked.findings[:10]:
        print(f"  {f}")
    return 0 if checked.ok and units.ok and not silent else 1


if __name__ == "__main__":
    main()
