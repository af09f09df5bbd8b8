"""Shared pieces of the benchmark: a private Mosquitto, /proc readings, a counting subscriber.

Nothing here imports the tests: the broker is the same idea as `tests/fixtures_broker.py`
(own port on 127.0.0.1, never the system broker on 1883; `max_queued_messages 0` so a slow
QoS 1 subscriber loses nothing at the broker, see MEASURED.md).
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt

from linetap.simulators.net import free_port, wait_port

CLK_TCK = os.sysconf("SC_CLK_TCK")
MOSQUITTO_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def find_mosquitto() -> str:
    found = shutil.which("mosquitto") or next((p for p in MOSQUITTO_CANDIDATES if os.access(p, os.X_OK)), None)
    if not found:
        raise RuntimeError("mosquitto not found (apt install mosquitto)")
    return found


class Mosquitto:
    """A private Mosquitto on a free 127.0.0.1 port, no persistence, no-loss queue settings."""

    host = "127.0.0.1"

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.conf = self.workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            f"user {getpass.getuser()}\n"
            "persistence false\n"
            "max_queued_messages 0\n"
            "max_queued_bytes 0\n"
            "max_inflight_messages 100\n"
            "set_tcp_nodelay true\n"
            "log_dest stderr\nlog_type error\nlog_type warning\n"
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> Mosquitto:
        log = open(self.workdir / "mosquitto.log", "ab")  # noqa: SIM115 (the child keeps it)
        self.proc = subprocess.Popen([find_mosquitto(), "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_port(self.port)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None


# --- /proc -------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) * 1024
    return out


class ProcWatch:
    """CPU over a window and RSS sampled every `period` s (max and mean), for a set of processes."""

    def __init__(self, pids: dict[str, list[int]], period: float = 0.25) -> None:
        self.pids = pids
        self.period = period
        self.rss: dict[str, list[int]] = {k: [] for k in pids}
        self._stop = threading.Event()
        self._cpu0: dict[str, float] = {}
        self._t0 = 0.0
        self.cpu: dict[str, float] = {}  # cores, average over the window
        self.hwm: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _group_cpu(self, name: str) -> float:
        total = 0.0
        for pid in self.pids[name]:
            try:
                total += cpu_seconds(pid)
            except (OSError, IndexError):
                pass
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            for name, pids in self.pids.items():
                total = 0
                for pid in pids:
                    try:
                        total += proc_status(pid).get("VmRSS", 0)
                    except OSError:
                        pass
                self.rss[name].append(total)

    def start(self) -> ProcWatch:
        self._t0 = time.monotonic()
        self._cpu0 = {k: self._group_cpu(k) for k in self.pids}
        self._thread.start()
        return self

    def stop(self) -> float:
        elapsed = time.monotonic() - self._t0
        self.cpu = {k: (self._group_cpu(k) - self._cpu0[k]) / elapsed for k in self.pids}
        for name, pids in self.pids.items():
            hwm = 0
            for pid in pids:
                try:
                    hwm = max(hwm, proc_status(pid).get("VmHWM", 0))
                except OSError:
                    pass
            self.hwm[name] = hwm
        self._stop.set()
        self._thread.join()
        return elapsed

    def rss_max(self, name: str) -> int:
        return max(self.rss[name], default=0)

    def rss_mean(self, name: str) -> float:
        values = self.rss[name]
        return sum(values) / len(values) if values else 0.0


# --- subscriber ------------------------------------------------------------------------------

_COUNT = re.compile(rb'"count":(\d+)')
_FIRST_AGENT_TS = re.compile(rb'"agent_ts":\[(\d+)')
_ID = re.compile(rb'"id":"([^"]+)"')


@dataclass
class Received:
    samples: int = 0
    messages: int = 0
    duplicates: int = 0
    # (receive wall time s, agent_ts of the message's first sample in us, samples): telemetry latency
    telemetry_lat: list[tuple[float, int, int]] = field(default_factory=list)
    # (receive wall time s, device, serial) of the first telemetry message showing each new serial
    serial_seen: dict[tuple[str, str], float] = field(default_factory=dict)
    events: list[tuple[float, dict]] = field(default_factory=list)
    units: int = 0


class Subscriber:
    """QoS 1 subscriber on `{root}/#` that counts telemetry samples (the `count` of each message).

    Every message is timestamped with `time.time()` on arrival (paho's network thread).
    Telemetry: counted with a regex (no JSON parse), except messages holding `watch_tag`
    (the station's serial number), which are parsed to see when each new serial arrives.
    Events: parsed and kept whole. Duplicates (same message id twice) are counted once.
    """

    def __init__(self, host: str, port: int, root: str, watch_tag: str | None = "serial_number") -> None:
        self.host, self.port, self.root = host, port, root
        self.watch = watch_tag.encode() if watch_tag else None
        self.rx = Received()
        self._ids: set[bytes] = set()
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid.uuid4().hex[:8]}",
                                  clean_session=True)
        self.client.max_inflight_messages_set(100)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{root}/#", qos=1)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message

    def _on_message(self, client, userdata, msg) -> None:
        t = time.time()
        payload = msg.payload
        topic = msg.topic
        m = _ID.search(payload)
        with self._lock:
            rx = self.rx
            if m is not None:
                mid = m.group(1)
                if mid in self._ids:
                    rx.duplicates += 1
                    return
                self._ids.add(mid)
            rx.messages += 1
            if topic.endswith("/telemetry"):
                c = _COUNT.search(payload)
                n = int(c.group(1)) if c else 0
                rx.samples += n
                a = _FIRST_AGENT_TS.search(payload)
                if a is not None:
                    rx.telemetry_lat.append((t, int(a.group(1)), n))
                if self.watch is not None and self.watch in payload:
                    doc = orjson.loads(payload)
                    s = doc["samples"]
                    try:
                        i = s["tag"].index(self.watch.decode())
                    except ValueError:
                        return
                    serial = s["value"][i]
                    if isinstance(serial, str) and serial:
                        rx.serial_seen.setdefault((doc["device"], serial), t)
            elif topic.endswith("/events"):
                rx.events.append((t, orjson.loads(payload)))
            elif topic.endswith("/units"):
                rx.units += 1

    def start(self, timeout: float = 5.0) -> Subscriber:
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            raise TimeoutError("subscriber: no SUBACK")
        return self

    def samples(self) -> int:
        with self._lock:
            return self.rx.samples

    def snapshot_marks(self) -> tuple[int, int, int]:
        """(samples, telemetry messages seen so far, events so far): window bookkeeping."""
        with self._lock:
            return self.rx.samples, len(self.rx.telemetry_lat), len(self.rx.events)

    def telemetry_latency_ms(self, m0: int, m1: int) -> list[float]:
        """Telemetry messages m0..m1 (`snapshot_marks`): receive time minus the first sample's agent_ts, ms."""
        with self._lock:
            tel = self.rx.telemetry_lat[m0:m1]
        return [(t - a / 1e6) * 1000 for t, a, _ in tel]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def stop_process(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it has not ended within `grace` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
