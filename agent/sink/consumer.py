"""`linetap sink`: the MES-side consumer. MQTT 5 -> database, a PUBACK only after the commit.

- paho-mqtt 2.x, MQTT 5, `clean_start=False` with a session expiry: a sink that is stopped or
  killed finds the messages queued for it (and the ones it had not acknowledged) when it comes
  back with the same client id.
- QoS 1 with manual acknowledgement (`manual_ack=True`): messages are collected into batches,
  stored in one transaction, and acknowledged (`client.ack`) after the commit. A message
  received on an earlier connection is never acknowledged on a later one (its packet id may
  have been reused): the broker re-sends it, and the duplicate is stored once.
- `--share GROUP` subscribes `$share/GROUP/<filter>`: several sinks split the load.
- Payloads are dispatched on their `schema`; the agent's status and replay requests are skipped;
  anything else on the filter is acknowledged, counted and logged (a warning per kind of payload,
  then a count).
- Holes no gap event covers are asked for from the agent after `replay_after` s (`recover.py`).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from linetap.agent.logs import get_logger
from linetap.agent.sink.db import Target, TargetError
from linetap.agent.sink.recover import CHECK_EVERY, Recovery
from linetap.agent.sink.store import Store, parse_payload
from linetap.config.models import TLSConfig
from linetap.config.secrets import FileProblem
from linetap.config.tls import client_context

__all__ = ["SinkError", "SinkOptions", "run_sink"]

log = get_logger("linetap.agent.sink")

BATCH_MAX = 500  # messages per transaction
BATCH_WAIT = 0.05  # s: how long a batch waits for more messages
CONNECT_TIMEOUT = 15.0  # s: the first CONNACK (later losses are retried for as long as they last)
REFRESH_EVERY = 2.0  # s: completeness bookkeeping (sink_streams) of unit records and events
REFRESH_TELEMETRY = 30.0  # s: and of telemetry


class SinkError(RuntimeError):
    """The sink cannot run (exit 3): broker unreachable or refusing, database failing."""


@dataclass
class SinkOptions:
    host: str
    port: int
    topic: str = "#"
    share: str | None = None
    client_id: str = "linetap-sink"
    session_expiry: int = 7 * 86400
    keepalive: int = 30
    username: str | None = None
    password: str | None = None
    tls: TLSConfig | None = None  # TLS (mqtts): the CA, a client certificate (config.models.TLSConfig)
    replay_after: float = 60.0  # s a hole stays open before the agent is asked for it (0: never ask)
    replay_attempts: int = 6  # requests for one range before it is recorded as unrecovered

    @property
    def subscription(self) -> str:
        return f"$share/{self.share}/{self.topic}" if self.share else self.topic


def run_sink(opts: SinkOptions, target: Target, stop: threading.Event) -> dict[str, int]:
    """Consume until `stop` is set; return counts. Raises SinkError if the broker cannot be used."""
    store = Store(target)
    inbox: queue.Queue = queue.Queue()
    state = {"generation": 0, "fatal": None}
    subscribed = threading.Event()
    connected = threading.Event()
    where = f"{opts.host}:{opts.port}"

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=opts.client_id, protocol=mqtt.MQTTv5,
                         manual_ack=True)
    client.reconnect_delay_set(min_delay=0.1, max_delay=5)
    if opts.username is not None:
        client.username_pw_set(opts.username, opts.password)
    if opts.tls is not None:
        try:
            client.tls_set_context(client_context(opts.tls))
        except FileProblem as err:
            raise SinkError(str(err)) from None
        if opts.tls.insecure:
            client.tls_insecure_set(True)

    def on_connect(c, _userdata, _flags, reason_code, _props) -> None:
        if reason_code.is_failure:
            state["fatal"] = f"the broker at {where} refused the connection: {reason_code}"
            return
        state["generation"] += 1
        connected.set()
        c.subscribe(opts.subscription, options=SubscribeOptions(qos=1))

    def on_subscribe(_c, _userdata, _mid, reason_codes, _props) -> None:
        bad = [rc for rc in reason_codes if rc.is_failure]
        if bad:
            state["fatal"] = f"the broker at {where} refused the subscription {opts.subscription!r}: {bad[0]}"
            return
        log.info("sink subscribed", broker=where, subscription=opts.subscription, client_id=opts.client_id,
                 generation=state["generation"])
        subscribed.set()

    def on_disconnect(_c, _userdata, _flags, reason_code, _props) -> None:
        if not stop.is_set():
            log.warning("sink lost the broker; reconnecting", broker=where, reason=str(reason_code))

    def on_message(_c, _userdata, msg) -> None:
        inbox.put((state["generation"], msg.mid, msg.qos, msg.topic, bytes(msg.payload)))

    client.on_connect, client.on_subscribe = on_connect, on_subscribe
    client.on_disconnect, client.on_message = on_disconnect, on_message
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = opts.session_expiry
    try:
        client.connect(opts.host, opts.port, keepalive=opts.keepalive, clean_start=False, properties=props)
    except (OSError, ValueError) as err:
        cause = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise SinkError(f"cannot reach the MQTT broker at {where}: {cause} "
                        "(is it running, and is --broker HOST:PORT right?)") from None
    client.loop_start()

    def publish(topic: str, payload: bytes) -> bool:
        return connected.is_set() and client.publish(topic, payload, qos=1).rc == mqtt.MQTT_ERR_SUCCESS

    recovery = (Recovery(target, opts.client_id, publish, after=opts.replay_after, attempts=opts.replay_attempts)
                if opts.replay_after > 0 else None)
    # telemetry holes are seen once its bookkeeping is refreshed: at least twice per replay delay
    telemetry_every = min(REFRESH_TELEMETRY, max(opts.replay_after / 2, REFRESH_EVERY)) if recovery else REFRESH_TELEMETRY
    counts: Counter = Counter()
    foreign_seen: Counter = Counter()
    touched: set[tuple[str, str]] = set()
    started = last_refresh = last_telemetry = last_recover = time.monotonic()
    try:
        while True:
            if state["fatal"]:
                raise SinkError(state["fatal"])
            if not connected.is_set() and time.monotonic() - started > CONNECT_TIMEOUT and not stop.is_set():
                raise SinkError(f"no MQTT answer (CONNACK) from {where} within {CONNECT_TIMEOUT:g} s: is it an "
                                "MQTT broker, and does it want TLS (--ca-file)?")
            batch = _take(inbox, stop)
            if batch:
                _handle(batch, store, client, state, counts, foreign_seen, touched, stop, recovery)
            now = time.monotonic()
            final = stop.is_set() and not batch
            if touched and (now - last_refresh > REFRESH_EVERY or final):
                # telemetry (the big table) less often than unit records and events
                due = {k for k in touched if k[1] != "telemetry" or final or now - last_telemetry > telemetry_every}
                if due:
                    try:
                        store.refresh_streams(due)
                        touched -= due
                        last_telemetry = now if any(k[1] == "telemetry" for k in due) else last_telemetry
                    except Exception as err:
                        if not store.t.lost(err):
                            raise
                        log.warning("sink could not update sink_streams: the database is away", error=str(err))
                last_refresh = now
            if recovery is not None and now - last_recover > CHECK_EVERY and not stop.is_set():
                try:
                    recovery.check(now)
                except Exception as err:
                    if not store.t.lost(err):
                        raise
                    log.warning("sink could not look for holes to ask for: the database is away", error=str(err))
                last_recover = now
            if stop.is_set() and not batch and inbox.empty():
                break
    finally:
        client.disconnect()
        client.loop_stop()
    log.info("sink stopped", **{k: v for k, v in counts.items()})
    return dict(counts)


def _take(inbox: queue.Queue, stop: threading.Event) -> list:
    try:
        first = inbox.get(timeout=0.2 if not stop.is_set() else 0.01)
    except queue.Empty:
        return []
    batch = [first]
    deadline = time.monotonic() + BATCH_WAIT
    while len(batch) < BATCH_MAX:
        left = deadline - time.monotonic()
        try:
            batch.append(inbox.get(timeout=max(left, 0)) if left > 0 else inbox.get_nowait())
        except queue.Empty:
            break
    return batch


def _handle(batch, store: Store, client, state, counts: Counter, foreign_seen: Counter, touched,
            stop: threading.Event, recovery: Recovery | None) -> None:
    parsed = []
    for _gen, _mid, _qos, topic, payload in batch:
        p = parse_payload(payload)
        if p.kind == "foreign":
            counts["ignored"] += 1
            foreign_seen[p.reason] += 1
            n = foreign_seen[p.reason]
            if n == 1 or n % 1000 == 0:
                log.warning("sink ignored a payload that is not a linetap record", topic=topic, reason=p.reason,
                            ignored_so_far=n)
            continue
        if recovery is not None and p.doc is not None and isinstance(p.doc.get("agent"), str):
            recovery.saw(p.doc["agent"], topic)
        if p.kind in ("status", "control"):
            counts[p.kind] += 1
            continue
        parsed.append(p)
    if parsed:
        res = _store_retrying(store, parsed, stop)  # committed when it returns
        for stream, n in res.inserted.items():
            counts[stream] += n
        counts["duplicates"] += res.duplicates
        touched |= res.touched
        for agent, stream, seq, kind, detail in res.problems:
            counts[kind] += 1
            log.warning("sink found a problem", agent=agent, stream=stream, seq=seq, problem=kind, detail=detail)
    generation = state["generation"]
    for gen, mid, qos, _topic, _payload in batch:
        if qos > 0 and gen == generation:
            client.ack(mid, qos)


RETRY_SQLSTATES = ("40001", "40P01")  # serialization failure, deadlock (PostgreSQL, sinks side by side)


def _store_retrying(store: Store, parsed: list, stop: threading.Event, attempts: int = 5):
    """Store one batch: retried on a conflict with another sink (a few times), and while the PostgreSQL
    server is away (until it is back or the sink is stopped: nothing of the batch is acknowledged)."""
    conflicts, delay = 0, 0.2
    while True:
        try:
            return store.store(parsed)
        except Exception as err:
            t = store.t
            if getattr(err, "sqlstate", None) in RETRY_SQLSTATES and conflicts < attempts:
                conflicts += 1
                log.warning("sink batch conflicted with another sink; retrying", attempt=conflicts, error=str(err))
                time.sleep(0.05 * conflicts)
                continue
            if not t.lost(err):
                raise
            log.error("sink lost the database; retrying (nothing is acknowledged meanwhile)", db=t.where,
                      error=str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
        while True:  # reconnect with capped backoff
            if stop.is_set():
                raise SinkError(f"stopped while the database {store.t.where} was unreachable: the records "
                                "not stored were not acknowledged, the broker re-sends them to this session")
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
            try:
                store.t.reconnect()
                log.info("sink reconnected to the database", db=store.t.where)
                break
            except TargetError as err:
                log.warning("database still unreachable", db=store.t.where, error=str(err))
