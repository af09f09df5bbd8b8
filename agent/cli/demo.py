"""`linetap demo`: a whole line on one machine — station simulator, broker, agent, subscriber.

Needs nothing but Python: the broker is Mosquitto when it is installed, else an embedded
amqtt broker, unless --broker names one. The demo ends with what the MES stand-in received and
whether the hash chains verified; `DemoResult.ok` is the exit code's truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TextIO

import orjson
import typer

from linetap.agent.cli.demo_view import Display, Frame, make_display
from linetap.agent.logs import configure_logging
from linetap.agent.mqtt_client import mqtt_client
from linetap.agent.runtime import Agent
from linetap.buffers.verify import Report, verify_lines
from linetap.config.loader import load_config
from linetap.config.models import LineConfig

from .common import app, run_until_signal

EXAMPLE = "heat-sealer-modbus.yaml"
CONNECT_TIMEOUT = 3.0  # seconds to reach a broker given with --broker
SUBSCRIBE_TIMEOUT = 5.0
REFRESH = 1.0  # seconds between live-view frames


class DemoError(Exception):
    """Why the demo could not run, as one line for the terminal (no traceback)."""


def parse_broker(value: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 as `[::1]:1883`) -> (host, port); ValueError says what is wrong."""
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:1883)")
    return host, int(port)


async def check_reachable(host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> None:
    """Fail fast with one line when a given broker cannot be reached (the agent itself would retry forever)."""
    try:
        sock = await asyncio.to_thread(socket.create_connection, (host, port), timeout)
    except OSError as err:
        raise unreachable(host, port, err) from None
    sock.close()


def unreachable(host: str, port: int, err: OSError) -> DemoError:
    reason = (err.strerror or str(err) or type(err).__name__).lower()  # "connection refused", "timed out", ...
    return DemoError(f"cannot reach the broker at {host}:{port}: {reason}")


@contextlib.asynccontextmanager
async def demo_broker(broker: tuple[str, int] | None, workdir: Path):
    """Yield (host, port, description) of a broker for the demo."""
    if broker:
        host, port = broker
        await check_reachable(host, port)
        yield host, port, f"broker at {host}:{port}"
        return
    from linetap.simulators.net import free_port

    port = free_port()
    binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if binary:
        conf = workdir / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n")
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            await _wait_port(port, f"Mosquitto ({binary})")
            yield "127.0.0.1", port, f"Mosquitto (pid {proc.pid}) on 127.0.0.1:{port}"
        finally:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        return
    from amqtt.broker import Broker

    embedded = Broker({
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    })
    await embedded.start()
    try:
        yield "127.0.0.1", port, f"embedded amqtt broker on 127.0.0.1:{port} (install mosquitto for more speed)"
    finally:
        await embedded.shutdown()


async def _wait_port(port: int, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.05)
    raise DemoError(f"{what} did not open port {port} within {timeout:.0f}s")


@dataclass
class SubscriberView:
    """What the MES side sees: counts per stream, the latest records, and every unit record and event
    as received (few and small: kept whole so the hash chains can be verified at the end)."""

    messages: int = 0
    samples: int = 0
    units: int = 0
    events: int = 0
    last_message_at: float = 0.0
    records: list[tuple[str, bytes]] = field(default_factory=list)  # (where, payload) for verify_lines
    recent: deque = field(default_factory=lambda: deque(maxlen=5))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_message(self, _client, _userdata, msg) -> None:
        try:
            doc = orjson.loads(msg.payload)
        except orjson.JSONDecodeError:
            return
        with self.lock:
            self.messages += 1
            self.last_message_at = time.monotonic()
            stream = doc.get("stream")
            if stream == "telemetry":
                self.samples += doc.get("count", 0)
            elif stream in ("units", "events"):
                if stream == "units":
                    self.units += 1
                else:
                    self.events += 1
                self.records.append((f"{msg.topic} message {self.messages}", bytes(msg.payload)))
                self.recent.append(f"{stream[:-1]} #{doc.get('seq')}: " + _describe(doc.get("body", {})))

    def chains(self) -> Report:
        with self.lock:
            records = list(self.records)
        return verify_lines(records)

    async def settle(self, quiet: float = 0.5, limit: float = 3.0) -> None:
        """Wait until nothing arrived for `quiet` s (at most `limit` s): the broker may still be delivering
        what the agent had published before it stopped."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and time.monotonic() - self.last_message_at < quiet:
            await asyncio.sleep(0.05)


def _describe(body: dict) -> str:
    keys = ("kind", "state", "serial", "verdict", "parameter", "value", "reason", "device")
    return ", ".join(f"{k}={body[k]}" for k in keys if body.get(k) is not None)


@dataclass
class DemoResult:
    """What the MES stand-in received, and whether that proves the line works."""

    elapsed: float
    samples: int
    chains: Report
    buffer_path: Path

    def _unique(self, stream: str) -> int:
        return sum(c["unique"] for key, c in self.chains.counts.items() if key.endswith(f"/{stream}"))

    @property
    def units(self) -> int:
        return self._unique("units")

    @property
    def events(self) -> int:
        return self._unique("events")

    def missing(self) -> list[str]:
        """The streams of which nothing reached the MES."""
        counts = {"telemetry": self.samples, "unit records": self.units, "events": self.events}
        return [name for name, n in counts.items() if not n]

    @property
    def ok(self) -> bool:
        return not self.missing() and self.chains.ok

    def summary(self) -> str:
        lines = [
            f"linetap demo: in {self.elapsed:.1f}s the MES stand-in received {self.samples:,} samples, "
            f"{self.units} unit records and {self.events} events",
            f"  hash chains: {self._chains_line()}",
            *(f"    {finding}" for finding in self.chains.findings[:10]),
            f"  buffer kept in {self.buffer_path}",
        ]
        if self.ok:
            lines.append("linetap demo: OK: telemetry, unit records and events reached the MES; the chains verified")
            return "\n".join(lines)
        failed = []
        if missing := self.missing():
            failed.append("no " + ", no ".join(missing) + " reached the MES")
            if "unit records" in missing:
                failed[-1] += " (the simulated units take about 2 s each: run 12 s or more)"
        if not self.chains.ok:
            failed.append("the hash chains did not verify")
        lines.append("linetap demo: FAILED: " + "; ".join(failed))
        return "\n".join(lines)

    def _chains_line(self) -> str:
        if not self.chains.ok:
            return f"NOT verified ({len(self.chains.findings)} finding(s))"
        if not self.chains.counts:
            return "nothing to verify"
        spans = ", ".join(f"{key.rpartition('/')[2]} seq {c['first']}..{c['last']}"
                          for key, c in sorted(self.chains.counts.items()))
        return f"verified ({spans}: none altered, reordered or left out)"


def demo_config(sim_port: int, broker_host: str, broker_port: int, workdir: Path, interval: float,
                bulk_tags: int) -> LineConfig:
    """The example line of `config/examples`, pointed at this demo's simulator, broker and folder."""
    from linetap.config.devices.modbus import ModbusTag

    example = resources.files("linetap.config") / "examples" / EXAMPLE
    with resources.as_file(example) as path:
        cfg = load_config(path)
    from linetap.simulators import BULK_ADDRESS, BULK_COUNT

    # Extra load: the simulator's bulk block of float32 values that change over time.
    bulk = [ModbusTag(name=f"load_{i:04d}", address=BULK_ADDRESS + 2 * i, type="float32")
            for i in range(min(bulk_tags, BULK_COUNT))]
    devices = [d.model_copy(update={"host": "127.0.0.1", "port": sim_port, "poll_interval": interval,
                                    "tags": [*d.tags, *bulk]}) for d in cfg.devices]
    return cfg.model_copy(update={
        "devices": devices,
        "mqtt": cfg.mqtt.model_copy(update={"host": broker_host, "port": broker_port}),
        "buffer": cfg.buffer.model_copy(update={"path": workdir / "demo-buffer.duckdb"}),
        "reconnect": cfg.reconnect.model_copy(update={"min": 0.5, "max": 5.0}),
    })


async def start_subscriber(cfg: LineConfig, view: SubscriberView, stack: contextlib.AsyncExitStack) -> None:
    """The MES stand-in, subscribed (SUBACK received) before the agent starts, so it misses nothing."""
    host, port = cfg.mqtt.host, cfg.mqtt.port
    subscribed = threading.Event()
    refused: list[str] = []

    def on_connect(client, _userdata, _flags, reason_code, _properties) -> None:
        if reason_code.is_failure:
            refused.append(str(reason_code))
            subscribed.set()  # nothing more will come: wake the waiter
        else:
            client.subscribe(f"{cfg.topic_root}/#", qos=1)

    sub = mqtt_client(cfg.mqtt, f"linetap-demo-mes-{port}", reconnect_on_failure=True)
    sub.on_message = view.on_message
    sub.on_connect = on_connect
    sub.on_subscribe = lambda *_: subscribed.set()
    try:
        sub.connect(host, port)
    except OSError as err:
        raise unreachable(host, port, err) from None
    sub.loop_start()
    stack.callback(sub.loop_stop)
    stack.callback(sub.disconnect)
    if not await asyncio.to_thread(subscribed.wait, SUBSCRIBE_TIMEOUT):
        raise DemoError(f"the broker at {host}:{port} did not answer the MES subscriber within {SUBSCRIBE_TIMEOUT:.0f}s")
    if refused:
        raise DemoError(f"the broker at {host}:{port} refused the MES subscriber: {refused[0]}")


async def run_demo(stop: asyncio.Event, *, broker: tuple[str, int] | None = None, duration: float | None = None,
                   bulk_tags: int = 200, interval: float = 0.1, out: TextIO | None = None) -> DemoResult:
    from linetap.simulators import ModbusStationServer, StationModel

    out = out or sys.stdout
    configure_logging("console", "warning")
    try:
        workdir = Path(tempfile.mkdtemp(prefix="linetap-demo-"))
    except OSError as err:
        raise DemoError(f"cannot create the demo's folder in {tempfile.gettempdir()}: {err.strerror or err}") from None
    async with contextlib.AsyncExitStack() as stack:
        host, port, broker_desc = await stack.enter_async_context(demo_broker(broker, workdir))
        model = StationModel(seed=1, cycle_time=2.0, out_of_limit_share=0.15)
        sim = ModbusStationServer(model, host="127.0.0.1", port=0)
        await sim.start()
        stack.push_async_callback(sim.stop)
        cfg = demo_config(sim.port, host, port, workdir, interval, bulk_tags)
        view = SubscriberView()
        await start_subscriber(cfg, view, stack)

        display = make_display(out, [
            "linetap demo  (Ctrl-C to stop)",
            f"  simulator: Modbus heat sealer on 127.0.0.1:{sim.port}    broker: {broker_desc}",
            f"  topics:    {cfg.topic_root}/#",
        ])
        stack.callback(display.close)
        # again, now that a terminal view may have redirected sys.stderr: warnings then print above the view
        configure_logging("console", "warning")
        agent = Agent(cfg)
        started = time.monotonic()
        await _run_agent(agent, stop, duration, lambda: _refresh(display, agent, view, started), workdir)
        await view.settle()
        elapsed = time.monotonic() - started
    return DemoResult(elapsed=elapsed, samples=view.samples, chains=view.chains(), buffer_path=cfg.buffer.path)


async def _run_agent(agent: Agent, stop: asyncio.Event, duration: float | None, refresh, workdir: Path) -> None:
    """Run the agent (owned by a TaskGroup) until `stop` or `duration`, refreshing the view every second."""
    agent_stop = asyncio.Event()
    started = time.monotonic()
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(agent.run(agent_stop))
            try:
                while not stop.is_set() and (duration is None or time.monotonic() - started < duration):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), REFRESH)
                    await refresh()
            finally:
                agent_stop.set()
    except ExceptionGroup as group:
        # the demo promises one line, not a traceback; the details are kept for whoever debugs it
        err = group.exceptions[0]
        details = workdir / "demo-error.txt"
        details.write_text("".join(traceback.format_exception(group)))
        raise DemoError(f"the agent stopped on an error: {type(err).__name__}: {err} (details in {details})") from None


async def _refresh(display: Display, agent: Agent, view: SubscriberView, started: float) -> None:
    buffer = await agent.buffer.stats("mqtt") if agent.buffer is not None else ()
    with view.lock:
        frame = Frame(elapsed=time.monotonic() - started, buffered=agent.stats.samples_buffered,
                      samples=view.samples, messages=view.messages, units=view.units, events=view.events,
                      buffer=buffer, devices=agent.stats.devices, recent=list(view.recent))
    display.show(frame)


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------

EXIT_DEMO_FAILED = 1  # the demo ran, but the MES did not receive what it should (or the chains did not verify)


@app.command()
def demo(
    broker: str | None = typer.Option(None, help="use this broker (HOST:PORT) instead of starting one"),
    duration: float | None = typer.Option(None, help="stop after this many seconds (default: until Ctrl-C)"),
    tags: int = typer.Option(200, help="extra bulk tags to poll besides the station's own"),
    interval: str = typer.Option("100ms", help="poll interval"),
) -> None:
    """Simulator + broker + agent + subscriber on this machine, with a live view. Needs nothing installed.

    Ends with what the MES stand-in received; exit 0 only if telemetry, unit records and events
    arrived and their hash chains verified, else 1.
    """
    from linetap.config.units import parse_duration
    from linetap.simulators import BULK_COUNT

    # every check before anything starts: a typo is a usage error (exit 2), not a half-started line
    if duration is not None and not duration > 0:  # `not >` also refuses nan
        raise typer.BadParameter("must be more than 0 seconds (leave it out to run until Ctrl-C)",
                                 param_hint="--duration")
    if not 0 <= tags <= BULK_COUNT:
        raise typer.BadParameter(f"must be 0..{BULK_COUNT} (the simulator's bulk block)", param_hint="--tags")
    try:
        poll = parse_duration(interval)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--interval") from None
    if not poll > 0:
        raise typer.BadParameter("must be more than 0 (e.g. 100ms)", param_hint="--interval")
    try:
        broker_addr = parse_broker(broker) if broker is not None else None
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--broker") from None
    try:
        result = run_until_signal(lambda stop: run_demo(stop, broker=broker_addr, duration=duration,
                                                         bulk_tags=tags, interval=poll))
    except DemoError as err:
        typer.echo(f"linetap demo: {err}", err=True)
        raise typer.Exit(EXIT_DEMO_FAILED) from None
    typer.echo(result.summary())
    raise typer.Exit(0 if result.ok else EXIT_DEMO_FAILED)
