"""`linetap demo`: a whole line on one machine — station simulator, broker, agent, subscriber.

Needs nothing but Python: the broker is Mosquitto when it is installed, else an embedded
amqtt broker, unless --broker names one.
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
from collections import deque
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt

from linetap.agent.logs import configure_logging
from linetap.agent.records import Quality
from linetap.agent.runtime import Agent
from linetap.config.loader import load_config
from linetap.config.models import LineConfig

EXAMPLE = "heat-sealer-modbus.yaml"



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def demo_broker(broker: str | None, workdir: Path):
    """Yield (host, port, description) of a broker for the demo."""
    if broker:
        host, _, port = broker.rpartition(":")
        yield host or "127.0.0.1", int(port or 1883), f"broker at {broker}"
        return
    port = free_port()
    binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if binary:
        conf = workdir / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n")
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            await _wait_port(port)
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


async def _wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"broker did not open port {port}")


@dataclass
class SubscriberView:
    """What the MES side sees: counts per stream and the latest events."""

    messages: int = 0
    samples: int = 0
    units: int = 0
    events: int = 0
    max_seq: dict[str, int] = field(default_factory=dict)
    recent: deque = field(default_factory=lambda: deque(maxlen=5))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_message(self, _client, _userdata, msg) -> None:
        try:
            doc = orjson.loads(msg.payload)
        except orjson.JSONDecodeError:
            return
        with self.lock:
            self.messages += 1
            stream = doc.get("stream")
            if stream == "telemetry":
                self.samples += doc.get("count", 0)
                last = doc.get("seq_last", 0)
            elif stream in ("units", "events"):
                if stream == "units":
                    self.units += 1
                else:
                    self.events += 1
                last = doc.get("seq", 0)
                body = doc.get("body", {})
                self.recent.append(f"{stream[:-1]} #{doc.get('seq')}: " + _describe(body))
            else:
                return
            self.max_seq[stream] = max(self.max_seq.get(stream, 0), last)


def _describe(body: dict) -> str:
    keys = ("kind", "state", "serial", "verdict", "parameter", "value", "reason", "device")
    return ", ".join(f"{k}={body[k]}" for k in keys if body.get(k) is not None)


def demo_config(sim_port: int, broker_host: str, broker_port: int, workdir: Path, interval: str,
                bulk_tags: int) -> LineConfig:
    """The example line of `config/examples`, pointed at this demo's simulator, broker and folder."""
    from linetap.config.units import parse_duration
    from linetap.drivers.modbus import ModbusTag

    example = resources.files("linetap.config") / "examples" / EXAMPLE
    with resources.as_file(example) as path:
        cfg = load_config(path)
    from linetap.simulators import BULK_ADDRESS, BULK_COUNT

    # Extra load: the simulator's bulk block of float32 values that change over time.
    bulk = [ModbusTag(name=f"load_{i:04d}", address=BULK_ADDRESS + 2 * i, type="float32")
            for i in range(min(bulk_tags, BULK_COUNT))]
    devices = [d.model_copy(update={"host": "127.0.0.1", "port": sim_port, "poll_interval": parse_duration(interval),
                                    "tags": [*d.tags, *bulk]}) for d in cfg.devices]
    return cfg.model_copy(update={
        "devices": devices,
        "mqtt": cfg.mqtt.model_copy(update={"host": broker_host, "port": broker_port}),
        "buffer": cfg.buffer.model_copy(update={"path": workdir / "demo-buffer.duckdb"}),
        "reconnect": cfg.reconnect.model_copy(update={"min": 0.5, "max": 5.0}),
    })


async def run_demo(stop: asyncio.Event, *, broker: str | None = None, duration: float | None = None,
                   bulk_tags: int = 200, interval: str = "100ms") -> None:
    from linetap.simulators import ModbusStationServer, StationModel

    configure_logging("console", "warning")
    workdir = Path(tempfile.mkdtemp(prefix="linetap-demo-"))
    out = sys.stdout
    async with contextlib.AsyncExitStack() as stack:
        host, port, broker_desc = await stack.enter_async_context(demo_broker(broker, workdir))
        model = StationModel(seed=1, cycle_time=2.0, out_of_limit_share=0.15)
        sim = ModbusStationServer(model, host="127.0.0.1", port=0)
        await sim.start()
        stack.push_async_callback(sim.stop)
        cfg = demo_config(sim.port, host, port, workdir, interval, bulk_tags)

        view = SubscriberView()
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"linetap-demo-mes-{port}")
        sub.on_message = view.on_message
        sub.on_connect = lambda c, *_: c.subscribe(f"{cfg.topic_root}/#", qos=1)
        sub.connect(host, port)
        sub.loop_start()
        stack.callback(sub.loop_stop)
        stack.callback(sub.disconnect)

        agent = Agent(cfg)
        agent_stop = asyncio.Event()
        started = time.monotonic()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(agent.run(agent_stop))
            try:
                while not stop.is_set():
                    if duration is not None and time.monotonic() - started >= duration:
                        break
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 1.0)
                    await _render(out, agent, view, cfg, broker_desc, sim.port, started)
            finally:
                agent_stop.set()
        elapsed = time.monotonic() - started
        out.write(f"\nlinetap demo: {view.samples} samples, {view.units} unit records, {view.events} events "
                  f"delivered in {elapsed:.1f}s ({view.samples / elapsed:,.0f} samples/s). "
                  f"Buffer kept in {cfg.buffer.path}\n")


async def _render(out, agent: Agent, view: SubscriberView, cfg: LineConfig, broker_desc: str, sim_port: int,
                  started: float) -> None:
    elapsed = max(1e-6, time.monotonic() - started)
    lines = [
        "\x1b[2J\x1b[H" if out.isatty() else "",
        "linetap demo  (Ctrl-C to stop)",
        f"  simulator: Modbus heat sealer on 127.0.0.1:{sim_port}    broker: {broker_desc}",
        f"  topics:    {cfg.topic_root}/#",
        "",
        f"  agent buffered {agent.stats.samples_buffered:>10,} samples  ({agent.stats.samples_buffered / elapsed:,.0f}/s)",
        f"  MES received   {view.samples:>10,} samples  ({view.samples / elapsed:,.0f}/s) in {view.messages:,} messages",
        f"                 {view.units:>10,} unit records, {view.events:,} events",
    ]
    if agent.buffer is not None:
        for s in await agent.buffer.stats("mqtt"):
            lines.append(f"  buffer {s.stream:<9} last seq {s.last_seq:>10}  acked {s.cursor:>10}  unsent {s.pending:>8}")
    for name, dev in agent.stats.devices.items():
        lines.append(f"  device {name}: {dev.state}{' (' + dev.reason + ')' if dev.reason else ''}")
        last = dev.last_batch
        shown_tags = zip(last.tag, last.value, last.quality, strict=True) if last is not None else ()
        for tag, value, quality in list(shown_tags)[:12]:
            q = "" if quality == Quality.GOOD else f"  [{Quality(quality).name.lower()}]"
            shown = f"{value:.2f}" if isinstance(value, float) else str(value)
            lines.append(f"      {tag:<22} {shown}{q}")
    if view.recent:
        lines.append("  latest records:")
        lines.extend(f"    {r}" for r in list(view.recent))
    out.write("\n".join(lines) + "\n")
    out.flush()
