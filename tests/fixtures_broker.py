"""Broker fixtures: a private MQTT broker per test, and a capturing subscriber.

`broker` starts its own Mosquitto (never the system one on 1883) on a free 127.0.0.1 port,
configured for no-loss tests: unlimited queue for QoS 1 subscribers (the default of 1000
drops messages silently, see MEASURED.md), persistence in a tmp dir so persistent subscriber
sessions survive `restart()`. Without a `mosquitto` binary it falls back to an embedded amqtt
broker in a subprocess (weaker: no persistence across restarts); `LINETAP_REQUIRE_MOSQUITTO=1`
turns that fallback into a failure. `broker_report_header()` says which one runs, for
conftest's `pytest_report_header`.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import paho.mqtt.client as mqtt
import pytest

from linetap.simulators.net import accepts, free_port

__all__ = ["Broker", "MQTTCapture", "Msg", "broker", "broker_report_header", "capture", "find_mosquitto"]

MOSQUITTO_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto")


def find_mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((p for p in MOSQUITTO_CANDIDATES if os.access(p, os.X_OK)), None)


def _require_mosquitto() -> bool:
    return os.environ.get("LINETAP_REQUIRE_MOSQUITTO", "") not in ("", "0", "false", "no")


def broker_report_header() -> str:
    """One line for `pytest_report_header`: which broker the MQTT tests run against."""
    path = find_mosquitto()
    if path:
        return f"mqtt broker: mosquitto ({path})"
    if _require_mosquitto():
        return "mqtt broker: mosquitto REQUIRED (LINETAP_REQUIRE_MOSQUITTO=1) but not found: MQTT tests will fail"
    return "mqtt broker: mosquitto not found, using embedded amqtt (no persistence across broker restarts)"


_AMQTT_SCRIPT = """
import asyncio, logging, sys
from amqtt.broker import Broker
logging.basicConfig(level=logging.WARNING)
async def main(port):
    broker = Broker({
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    })
    await broker.start()
    await asyncio.Event().wait()
asyncio.run(main(int(sys.argv[1])))
"""


class Broker:
    """A private MQTT broker process. `stop()`/`start()` keep the port; `freeze()`/`thaw()` SIGSTOP/SIGCONT it."""

    host = "127.0.0.1"

    def __init__(self, workdir: Path, port: int | None = None, *, listener_conf: str = "",
                 allow_anonymous: bool = True) -> None:
        """`listener_conf`: Mosquitto lines for the listener (e.g. cafile/certfile/keyfile for TLS);
        `allow_anonymous=False` with a `password_file` line in it for username/password tests."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.mosquitto = find_mosquitto()
        if self.mosquitto is None and _require_mosquitto():
            raise RuntimeError("LINETAP_REQUIRE_MOSQUITTO=1 but no mosquitto binary found (apt install mosquitto)")
        self.kind = "mosquitto" if self.mosquitto else "amqtt"
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "broker.log"
        self.conf_path = self.workdir / "mosquitto.conf"
        if self.kind == "mosquitto":
            (self.workdir / "data").mkdir(exist_ok=True)
            self.conf_path.write_text(
                f"listener {self.port} 127.0.0.1\n"
                f"{listener_conf.strip()}\n"
                f"allow_anonymous {'true' if allow_anonymous else 'false'}\n"
                # run as root, mosquitto would drop to user `mosquitto`, which cannot write the tmp dir
                f"user {getpass.getuser()}\n"
                "persistence true\n"
                f"persistence_location {self.workdir / 'data'}/\n"
                "autosave_interval 1\n"
                # no-loss settings: never drop a QoS 1 message queued for a slow or absent subscriber
                "max_queued_messages 0\n"
                "max_queued_bytes 0\n"
                "max_inflight_messages 100\n"
                "set_tcp_nodelay true\n"
                "log_dest stderr\n"
                "log_type error\nlog_type warning\nlog_type notice\n"
            )
        else:
            warnings.warn("mosquitto not found: MQTT tests use an embedded amqtt broker", stacklevel=2)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child keeps it)
        if self.kind == "mosquitto":
            cmd = [self.mosquitto, "-c", str(self.conf_path)]
        else:
            cmd = [sys.executable, "-c", _AMQTT_SCRIPT, str(self.port)]
        deadline = time.monotonic() + timeout
        while True:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
            while time.monotonic() < deadline and self.proc.poll() is None:
                if accepts(self.host, self.port):
                    log.close()
                    return
                time.sleep(0.02)
            # the port may still be in TIME_WAIT/owned by the previous instance: retry until the deadline
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            if time.monotonic() >= deadline:
                log.close()
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.kind} did not start on {self.host}:{self.port}:\n{tail}")
            time.sleep(0.1)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the broker cleanly (SIGTERM: Mosquitto writes its persistence file)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.thaw()
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def freeze(self) -> None:
        """SIGSTOP: the broker keeps its sockets but answers nothing."""
        if self.running:
            os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.running:
            os.kill(self.proc.pid, signal.SIGCONT)

    def __repr__(self) -> str:
        return f"Broker({self.kind} {self.host}:{self.port} pid={self.pid})"


@pytest.fixture
def broker(tmp_path_factory):
    b = Broker(tmp_path_factory.mktemp("broker"))
    b.start()
    try:
        yield b
    finally:
        b.stop()


class Msg(NamedTuple):
    topic: str
    payload: bytes
    t: float  # time.monotonic() at receipt
    retain: bool


class MQTTCapture:
    """A QoS 1 subscriber with a persistent session that records everything it receives.

    Reconnects on its own (e.g. across `broker.restart()`); messages queued for it by the
    broker meanwhile arrive after the reconnect. `messages` is a snapshot list of `Msg`.
    """

    def __init__(self, host: str, port: int, topics: tuple[str, ...] = ("#",), client_id: str | None = None,
                 clean: bool = False, *, username: str | None = None, password: str | None = None,
                 ca_file: str | None = None) -> None:
        self.host, self.port, self.topics = host, port, topics
        self._lock = threading.Lock()
        self._messages: list[Msg] = []
        self._subscribed = threading.Event()
        self.connects = 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"capture-{uuid.uuid4().hex[:8]}",
                                  clean_session=clean)
        self.client.reconnect_delay_set(min_delay=0.05, max_delay=0.5)
        if username is not None:
            self.client.username_pw_set(username, password)
        if ca_file is not None:
            self.client.tls_set(ca_certs=str(ca_file))
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            return
        self.connects += 1
        client.subscribe([(t, 1) for t in self.topics])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self._subscribed.set()

    def _on_message(self, client, userdata, message) -> None:
        msg = Msg(message.topic, bytes(message.payload), time.monotonic(), bool(message.retain))
        with self._lock:
            self._messages.append(msg)

    def start(self, timeout: float = 5.0) -> MQTTCapture:
        self.client.connect(self.host, self.port, keepalive=10)
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            raise TimeoutError(f"capture: no SUBACK from {self.host}:{self.port} within {timeout}s")
        return self

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> MQTTCapture:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def messages(self) -> list[Msg]:
        with self._lock:
            return list(self._messages)

    def on(self, suffix: str) -> list[Msg]:
        """Messages whose topic ends with `suffix` (e.g. "/events")."""
        return [m for m in self.messages if m.topic.endswith(suffix)]

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()

    def wait_for(self, predicate: Callable[[list[Msg]], bool], timeout: float = 10.0) -> list[Msg]:
        """Block until predicate(messages) is true; raise TimeoutError. Not for use on an event loop."""
        deadline = time.monotonic() + timeout
        while True:
            msgs = self.messages
            if predicate(msgs):
                return msgs
            if time.monotonic() > deadline:
                raise TimeoutError(f"capture: condition not met within {timeout}s ({len(msgs)} messages)")
            time.sleep(0.01)

    async def until(self, predicate: Callable[[list[Msg]], bool], timeout: float = 10.0) -> list[Msg]:
        """`wait_for` for async tests: sleeps on the event loop instead of blocking it."""
        deadline = time.monotonic() + timeout
        while True:
            msgs = self.messages
            if predicate(msgs):
                return msgs
            if time.monotonic() > deadline:
                raise TimeoutError(f"capture: condition not met within {timeout}s ({len(msgs)} messages)")
            await asyncio.sleep(0.01)


@pytest.fixture
def capture(broker):
    """A capturing subscriber on `#` of the test's broker, subscribed before the test starts."""
    c = MQTTCapture(broker.host, broker.port).start()
    try:
        yield c
    finally:
        c.close()
