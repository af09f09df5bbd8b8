"""The MQTT forwarder: buffer rows after the cursor -> QoS 1 publishes -> cursor on PUBACK.

At least once, in order, per stream (`events`, `units`, `telemetry`):

- Everything it sends was committed to the buffer first; the cursor of a stream moves only to the highest
  seq below which every message is acknowledged (PUBACK), so after a crash or a lost connection the
  forwarder resends from the cursor.
- A bounded window: at most `mqtt.max_inflight` messages are unacknowledged (taken from the
  buffer but not PUBACKed) at any time, across streams; paho's own `max_inflight_messages`
  is the same number. Every `publish()` return code is checked.
- Priority: events, then units, then telemetry. The writer hands freshly committed events
  and unit records to `offer()`, which publishes them at once when the forwarder is caught up
  on that stream; otherwise, before every telemetry message, the forwarder looks for new
  events/units (an in-memory counter, no query). Telemetry never takes the last
  `min(4, window/4)` window slots, so a telemetry backlog cannot hold an event back.
- One paho client per connection (clean session): after a reconnect, the messages the old
  connection left unacknowledged are re-sent byte for byte (same id, same content, same
  `sent_at`), in order, before anything new; paho never replays a stale queue of its own.

Threads: paho's network thread (`loop_start`) only runs paho; its callbacks hand over to the event loop
with `call_soon_threadsafe`. All state lives on the event loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import pyarrow as pa
import structlog
from paho.mqtt.enums import MQTTErrorCode

from linetap.agent.backoff import Backoff
from linetap.agent.encoders import Encoder, encoder_for
from linetap.agent.mqtt_client import (
    CONNECT_TIMEOUT,
    ConnectionLost,
    SocketErrors,
    close_quietly,
    describe_connection_error,
    loss_reason,
    mqtt_client,
    reason_words,
)
from linetap.agent.replay_server import ReplayServer
from linetap.agent.status_file import ForwarderStats
from linetap.agent.telemetry_source import TelemetrySource
from linetap.agent.topics import STREAMS
from linetap.buffers import BufferWriteFailed
from linetap.buffers.records import StoredRecord
from linetap.config.secrets import FileProblem
from linetap.drivers.samples import now_us

log = structlog.get_logger("linetap.forwarder")

RECORD_STREAMS = ("events", "units")
CURSOR_FLUSH_INTERVAL = 0.1  # s: cursors are written at most this often while messages are in flight
READ_RETRY = 1.0  # s: between reads of a buffer whose reads fail (a full disk)
IDLE_RECHECK = 1.0  # s: look at the buffer even without notify() (safety net, not the normal path)
SHUTDOWN_DRAIN = 2.0  # s: on stop, how long to wait for in-flight PUBACKs (and the `offline` status's)
SHUTDOWN_DISCONNECT = 2.0  # s: on stop, how long to wait for the DISCONNECT to be written


@dataclass(slots=True, eq=False)
class _Out:
    """One message, from the moment it is taken from the buffer until its cursor passes it."""

    stream: str
    first: int
    last: int
    topic: str
    payload: bytes
    samples: int = 0
    acked: bool = False
    sent_at: float | None = None  # monotonic time of the latest publish (PUBACK latency; set: a re-send is `resent`)


class MQTTForwarder:
    """Forwards the buffer to the plant broker. `await run()` until cancelled; call `notify()` after appends."""

    def __init__(self, config: Any, buffer: Any, sink: str = "mqtt", encoder: Encoder | None = None) -> None:
        self.config = config
        self.mqtt = config.mqtt
        self.buffer = buffer
        self.sink = sink
        self.agent = config.agent.id
        self.encoder = encoder or encoder_for(config)  # payloads and topics: `mqtt.payload`
        self.window = self.mqtt.max_inflight
        # Window slots telemetry may not take, so a non-conformance never waits behind a full window.
        self.reserve = min(4, self.window // 4)
        self.batch = self.mqtt.telemetry_batch
        self.chunk_rows = max(self.batch, 20_000)
        self.client_id = self.mqtt.client_id or f"linetap-{self.agent}"
        self.stats = ForwarderStats(broker=f"{self.mqtt.host}:{self.mqtt.port}", acked=dict.fromkeys(STREAMS, 0))

        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._client: mqtt.Client | None = None
        self._connack: asyncio.Future | None = None
        self._lost: asyncio.Future | None = None
        # thread -> loop hand-over of PUBACKs: (client, mid, failure reason or None)
        self._acks: deque[tuple[mqtt.Client, int, str | None]] = deque()
        self._ack_scheduled = False

        self._pending: dict[str, deque[_Out]] = {s: deque() for s in STREAMS}  # seq order
        self._to_send: deque[_Out] = deque()  # taken but not published on the current client
        self._by_mid: dict[int, _Out] = {}
        self._unacked = 0
        self._read_pos: dict[str, int] = {}  # highest seq taken from the buffer
        self._acked: dict[str, int] = {}  # cursor in memory
        self._stored: dict[str, int] = {}  # cursor in the buffer
        self._last_flush = 0.0
        self._read_fault: str | None = None  # cause of the buffer reads failing now (a full disk)
        self.telemetry = TelemetrySource(buffer, self.encoder, self.chunk_rows)
        self._status_mid: int | None = None
        self._status_acked: asyncio.Event | None = None
        self.replays = ReplayServer(config, buffer, self.encoder, self._publish_untracked)  # a runtime task

    # -- public ---------------------------------------------------------------------------

    def notify(self) -> None:
        """New data is in the buffer: look now. Safe from any thread."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wake.set()
        else:
            loop.call_soon_threadsafe(wake.set)

    def offer_telemetry(self, first: int, table: pa.Table) -> None:
        """Telemetry the writer just committed, seqs from `first` on: sent from memory when the pump
        is caught up (`TelemetrySource`), else read from the buffer."""
        if self.stats.connected:
            self.telemetry.offer(first, table)
        self.notify()

    def offer(self, records: dict[str, list[StoredRecord]]) -> None:
        """Events and unit records the writer just committed: publish them now, from memory, when
        this forwarder is connected and caught up on their stream (no buffer read, no wait for the
        pump). Otherwise, or for what does not fit the window, the pump reads them from the buffer."""
        if self._client is None or not self.stats.connected or self._lost is None or self._lost.done():
            self.notify()
            return
        sent_at = now_us()
        try:
            for stream in RECORD_STREAMS:
                for r in records.get(stream, ()):
                    if r.seq != self._read_pos[stream] + 1 or self._unacked >= self.window:
                        break
                    self._take(_Out(stream, r.seq, r.seq, *self.encoder.record(r, sent_at)))
            self._send_queued()
        except ConnectionLost:
            pass  # the pump sees the loss; what was taken is re-sent after the reconnect
        self.notify()

    async def run(self) -> None:
        """Connect, forward, reconnect; until cancelled. On cancel: `offline` status, a short
        wait for in-flight PUBACKs, the cursor stored, a clean DISCONNECT."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        for stream in STREAMS:
            seq = await self.buffer.cursor(self.sink, stream)
            self._read_pos[stream] = self._acked[stream] = self._stored[stream] = seq
        self.stats.acked = dict(self._acked)
        backoff = Backoff(self.mqtt.reconnect_min, self.mqtt.reconnect_max)
        connections = 0
        retrying = False
        try:
            while True:
                try:
                    await self._connect()
                except Exception as exc:  # noqa: BLE001 (unreachable, refused, TLS, bad files: retry, never crash)
                    await self._teardown()
                    self.stats.last_error = describe_connection_error(exc)
                    if not isinstance(exc, OSError | TimeoutError | ConnectionLost | FileProblem):
                        log.exception("mqtt connect failed unexpectedly", broker=self.stats.broker)
                    delay = backoff.next()
                    if not retrying:
                        log.warning("mqtt broker unreachable, retrying", broker=self.stats.broker,
                                    error=self.stats.last_error, retry_in=round(delay, 2))
                        retrying = True
                    else:
                        log.debug("mqtt connect failed", broker=self.stats.broker, error=self.stats.last_error,
                                  retry_in=round(delay, 2))
                    await self._flush_cursors(force=True)
                    await backoff.wait(delay)
                    continue
                connections += 1
                if connections > 1:
                    self.stats.reconnects += 1
                retrying = False
                backoff.reset()
                self.stats.connected = True
                log.info("mqtt connected", broker=self.stats.broker, client_id=self.client_id,
                         protocol=self.mqtt.protocol, tls=self.mqtt.tls is not None,
                         resending=len(self._to_send), cursors=dict(self._acked))
                try:
                    await self._pump()
                except ConnectionLost as exc:
                    self.stats.last_error = describe_connection_error(exc)
                self.stats.connected = False
                log.warning("mqtt connection lost", broker=self.stats.broker, error=self.stats.last_error,
                            unacknowledged=self._unacked, cursors=dict(self._acked))
                retrying = True  # loud once: the attempts that follow log at debug level
                await self._teardown()
                await self._flush_cursors(force=True)
                await backoff.wait()
        except asyncio.CancelledError:
            await self._shutdown()
            raise
        except BaseException:
            await self._teardown()
            raise

    # -- connection -----------------------------------------------------------------------

    def _new_client(self) -> mqtt.Client:
        # reconnecting is ours: a new client each time
        client = mqtt_client(self.mqtt, self.client_id, window=self.window)
        client.will_set(*self.encoder.status("offline", now_us()), qos=1, retain=True)
        socket_errors = SocketErrors()
        client.logger = socket_errors

        loop = self._loop
        client.on_connect = lambda c, u, flags, rc, props: loop.call_soon_threadsafe(self._on_connack, c, rc)
        client.on_disconnect = lambda c, u, flags, rc, props: loop.call_soon_threadsafe(
            self._on_disconnect, c, loss_reason(flags, rc, socket_errors.error, self.mqtt.keepalive))
        client.on_publish = self._on_publish_thread
        client.on_message = self.replays.on_message(loop)
        return client

    async def _connect(self) -> None:
        client = self._new_client()
        self._client = client
        self._connack = self._loop.create_future()
        self._lost = self._loop.create_future()
        self._by_mid.clear()
        self._acks.clear()
        kwargs: dict[str, Any] = {"keepalive": max(1, int(self.mqtt.keepalive))}
        if self.mqtt.protocol == "5":
            kwargs["clean_start"] = True
        connect = asyncio.ensure_future(asyncio.to_thread(client.connect, self.mqtt.host, self.mqtt.port, **kwargs))
        try:
            await asyncio.shield(connect)
        except asyncio.CancelledError:
            # the blocking connect finishes in its thread; close whatever it opened
            connect.add_done_callback(lambda _f: close_quietly(client))
            raise
        client.loop_start()
        done, _ = await asyncio.wait({self._connack, self._lost}, timeout=CONNECT_TIMEOUT,
                                     return_when=asyncio.FIRST_COMPLETED)
        if self._connack not in done:
            if self._lost.done():
                raise ConnectionLost(f"{self._lost.result()} before CONNACK")
            raise ConnectionLost(f"no CONNACK from the broker within {CONNECT_TIMEOUT:g}s")
        rc = self._connack.result()
        if rc.is_failure:
            raise ConnectionLost(f"broker refused the connection: {reason_words(rc)}")
        # online, retained; then what the previous connection left unacknowledged (priority, seq order); then new
        self._status_mid = None
        info = client.publish(*self.encoder.status("online", now_us()), qos=1, retain=True)
        self._check_rc(info.rc, "status")
        self._check_rc(client.subscribe(self.replays.topic, qos=1)[0], "replay subscription")
        self._to_send = deque(o for s in STREAMS for o in self._pending[s] if not o.acked)

    def _publish_untracked(self, topic: str, payload: bytes) -> bool:
        """QoS 1 on the current connection, outside the cursors (a replay); False if not connected."""
        client = self._client
        return (client is not None and self.stats.connected
                and client.publish(topic, payload, qos=1).rc == mqtt.MQTT_ERR_SUCCESS)

    def _on_connack(self, client: mqtt.Client, rc) -> None:
        if client is self._client and self._connack is not None and not self._connack.done():
            self._connack.set_result(rc)

    def _on_disconnect(self, client: mqtt.Client, reason: str) -> None:
        if client is self._client and self._lost is not None and not self._lost.done():
            self._lost.set_result(reason)
            self._wake.set()

    def _on_publish_thread(self, client, userdata, mid, rc, properties) -> None:
        # paho's network thread: hand over, one loop wake-up per burst of acks
        self._acks.append((client, mid, str(rc) if rc.is_failure else None))
        if not self._ack_scheduled:
            self._ack_scheduled = True
            self._loop.call_soon_threadsafe(self._drain_acks)

    def _drain_acks(self) -> None:
        self._ack_scheduled = False
        moved = False
        while self._acks:
            client, mid, failure = self._acks.popleft()
            if client is not self._client:
                continue
            if mid == self._status_mid and self._status_acked is not None:
                self._status_acked.set()
            out = self._by_mid.pop(mid, None)
            if out is None:
                continue
            if failure is not None:
                # MQTT 5: the broker refused it (e.g. not authorized). Never skip data: drop the
                # connection, the message is re-sent after the reconnect (and complained about).
                self.stats.last_error = f"broker refused {out.stream} {out.first}-{out.last}: {failure}"
                log.error("mqtt publish refused", topic=out.topic, seq=out.first, reason=failure)
                if self._lost is not None and not self._lost.done():
                    self._lost.set_result(failure)
                continue
            out.acked = True
            self.stats.acked_after(time.monotonic() - out.sent_at)
            self._unacked -= 1
            q = self._pending[out.stream]
            while q and q[0].acked:
                self._acked[out.stream] = q.popleft().last
                moved = True
        self.stats.inflight = self._unacked
        if moved:
            self.stats.acked = dict(self._acked)
        self._wake.set()

    async def _teardown(self) -> None:
        client = self._client
        self.stats.connected = False
        if client is None:
            return
        close_quietly(client)
        await asyncio.to_thread(client.loop_stop)
        self._drain_acks()  # PUBACKs that arrived before the loss still count: fewer re-sends
        self._client = None

    # -- forwarding -----------------------------------------------------------------------

    async def _pump(self) -> None:
        wake = self._wake
        while True:
            wake.clear()
            self._raise_if_lost()
            self._send_queued()
            try:
                await self._fill()
            except BufferWriteFailed as exc:  # a read that must spill, on a full disk: wait, read again
                self._read_failed(exc)
                await self._sleep(READ_RETRY)
                continue
            if self._read_fault is not None:
                log.info("buffer readable again", after=self._read_fault)
                self._read_fault = None
            self._raise_if_lost()
            await self._flush_cursors()
            if wake.is_set():
                continue
            timeout = IDLE_RECHECK
            if self._acked != self._stored:
                timeout = max(0.0, self._last_flush + CURSOR_FLUSH_INTERVAL - time.monotonic())
            await self._sleep(timeout)

    def _read_failed(self, exc: BufferWriteFailed) -> None:
        """Loudly once, then quietly until a read succeeds again. What is already in flight or
        offered from memory (events, unit records) goes on being sent."""
        if self._read_fault is None:
            log.warning("buffer read failed; retrying every second", cause=exc.cause, error=str(exc))
        else:
            log.debug("buffer read failed", cause=exc.cause)
        self._read_fault = exc.cause

    async def _sleep(self, timeout: float) -> None:
        """Until woken (ack, notify, loss) or `timeout` s. Not `asyncio.wait_for`: on Python 3.11
        it can swallow a cancellation that coincides with the wake-up, and `run()` would never stop."""
        if self._wake.is_set():
            return
        timer = self._loop.call_later(max(0.0, timeout), self._wake.set)
        try:
            await self._wake.wait()
        finally:
            timer.cancel()

    def _raise_if_lost(self) -> None:
        if self._lost is not None and self._lost.done():
            raise ConnectionLost(str(self._lost.result()))

    async def _fill(self) -> None:
        """Take messages from the buffer while the window has room: events, units, telemetry."""
        buf = self.buffer
        while self._unacked < self.window and not self._to_send and not self._lost.done():
            for stream in RECORD_STREAMS:
                if await buf.last_seq(stream) > self._read_pos[stream]:
                    records = await buf.read_records(stream, self._read_pos[stream], self.window - self._unacked)
                    sent_at = now_us()
                    for r in records:
                        if r.seq <= self._read_pos[stream]:
                            continue  # offer() took it while the read ran
                        self._take(_Out(stream, r.seq, r.seq, *self.encoder.record(r, sent_at)))
                    break
            else:
                if self._unacked >= self.window - self.reserve:
                    return  # the last slots are kept for events and unit records
                if not self.telemetry.has_messages:
                    if not await self.telemetry.load(self._read_pos["telemetry"]):
                        return
                    continue  # events first: they may have arrived during the read
                first, last, topic, payload = self.telemetry.next_message(now_us())
                self._take(_Out("telemetry", first, last, topic, payload, samples=last - first + 1))
            self._send_queued()

    def _take(self, out: _Out) -> None:
        self._pending[out.stream].append(out)
        self._read_pos[out.stream] = out.last
        self._to_send.append(out)
        self._unacked += 1
        self.stats.inflight = self._unacked

    def _send_queued(self) -> None:
        client = self._client
        while self._to_send:
            out = self._to_send[0]
            info = client.publish(out.topic, out.payload, qos=1)
            if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                log.debug("paho queue full, waiting for acknowledgements", inflight=self._unacked)
                return  # not queued: try again after acks
            self._check_rc(info.rc, out.topic)
            self._to_send.popleft()
            self._by_mid[info.mid] = out
            self.stats.messages_sent += 1
            self.stats.samples_sent += out.samples
            if out.sent_at is not None:
                self.stats.resent += 1
            out.sent_at = time.monotonic()

    def _check_rc(self, rc: int, what: str) -> None:
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            # NO_CONN and friends: the connection is gone; the message stays ours and is re-sent
            words = mqtt.error_string(rc).rstrip(".")
            if self._lost is not None and not self._lost.done():
                self._lost.set_result(f"publish failed: {words}")
            raise ConnectionLost(f"publish {what}: {words}")

    async def _flush_cursors(self, force: bool = False) -> None:
        """Store the cursors: at most every CURSOR_FLUSH_INTERVAL, or at once when nothing is in flight."""
        if self._acked == self._stored:
            return
        now = time.monotonic()
        if not force and self._unacked and now - self._last_flush < CURSOR_FLUSH_INTERVAL:
            return
        self._last_flush = now
        for stream, seq in list(self._acked.items()):
            if seq > self._stored[stream]:
                try:
                    await self.buffer.ack(self.sink, stream, seq)
                except BufferWriteFailed as exc:  # a full disk: the agent raises the alarm; store later
                    log.debug("cursor not stored: buffer cannot be written", stream=stream, seq=seq, cause=exc.cause)
                    return
                self._stored[stream] = seq

    # -- stop -----------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        client = self._client
        try:
            if client is not None and self.stats.connected and not self._lost.done():
                self._status_acked = asyncio.Event()
                with contextlib.suppress(ConnectionLost):
                    self._send_queued()
                    info = client.publish(*self.encoder.status("offline", now_us()), qos=1, retain=True)
                    self._status_mid = info.mid
                    self._check_rc(info.rc, "status")
                    deadline = time.monotonic() + SHUTDOWN_DRAIN
                    while ((self._unacked or not self._status_acked.is_set()) and not self._lost.done()
                           and time.monotonic() < deadline):
                        self._wake.clear()
                        await self._sleep(deadline - time.monotonic())
                    await self._disconnect_cleanly(client)
            await self._flush_cursors(force=True)
        finally:
            await self._teardown()
            log.info("mqtt forwarder stopped", broker=self.stats.broker, cursors=dict(self._stored),
                     unacknowledged=self._unacked)

    async def _disconnect_cleanly(self, client: mqtt.Client) -> None:
        """A DISCONNECT on the wire before the socket closes, so the broker discards the last will.

        paho's `disconnect()` only queues the packet for its network thread; closing the socket
        right after (as `_teardown` does) races it, and a lost race makes the broker publish the
        will (`offline` stamped with the connect time) over the `offline` just sent. paho calls
        `on_disconnect` once the packet is written: wait for that, bounded."""
        rc = client.disconnect()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or self._lost is None:
            return
        done, _ = await asyncio.wait({self._lost}, timeout=SHUTDOWN_DISCONNECT)
        if not done:
            log.warning("mqtt DISCONNECT not sent in time; the broker may publish the last will",
                        broker=self.stats.broker, waited=f"{SHUTDOWN_DISCONNECT:g}s")
