"""MES-requested replay: the running agent re-sends a range of one stream when asked on
`{topic_root}/_agent/{agent id}/replay` (QoS 1).

A request is JSON: `{"stream": "telemetry" | "units" | "events", "from_seq": N, "to_seq": M,
"requested_by": "mes-sink-1"}` (`to_seq` optional: to the last seq; `requested_by` optional, logged).
The messages are built from the buffer's rows as the forwarder builds them (same ids, same content;
only `sent_at` differs): telemetry is read from the start of the `telemetry_batch` bucket that holds
`from_seq`, so its messages are the ones first sent. The agent's cursors are not touched. Bounded
(`MAX_RECORDS` unit records or events, `MAX_SAMPLES` samples a request: the MES asks again for the
rest) and paced (`RATE` messages/s), so a request never crowds out live data (its messages share
paho's in-flight window with the forwarder's, briefly). What the buffer no longer holds (purged
after delivery by `buffer.retention`, or telemetry a gap event names) is logged as not available
and answered with a `replay_unavailable` event (stream, seq_first, seq_last, requested_by, reason):
the asker records the range as unrecoverable instead of asking again.

Who may publish there is the broker's business: allow only the MES's sink user to write
`+/+/+/+/_agent/+/replay` and each agent to read its own topic (README, "For the MES team").
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import structlog

from linetap.agent.encoders import Encoder
from linetap.drivers.samples import now_us

log = structlog.get_logger("linetap.agent.replay")

STREAMS = ("telemetry", "units", "events")
MAX_RECORDS = 10_000  # unit records or events per request
MAX_SAMPLES = 1_000_000  # telemetry samples per request
RATE = 200.0  # messages per second at most
QUEUED = 16  # requests waiting at most; beyond that new ones are refused (logged)


def replay_topic(topic_root: str, agent_id: str) -> str:
    return f"{topic_root.strip('/')}/_agent/{agent_id}/replay"


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    stream: str
    from_seq: int
    to_seq: int | None
    requested_by: str | None


def parse_request(payload: bytes) -> ReplayRequest:
    """The request, or ValueError saying what is wrong with it."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise ValueError("not JSON") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    stream, first, last, who = doc.get("stream"), doc.get("from_seq"), doc.get("to_seq"), doc.get("requested_by")
    if stream not in STREAMS:
        raise ValueError(f"stream {stream!r}: expected one of {', '.join(STREAMS)}")
    if not isinstance(first, int) or isinstance(first, bool) or first < 1:
        raise ValueError(f"from_seq {first!r}: expected an integer >= 1")
    if last is not None and (not isinstance(last, int) or isinstance(last, bool) or last < first):
        raise ValueError(f"to_seq {last!r}: expected an integer >= from_seq")
    if who is not None and not isinstance(who, str):
        raise ValueError("requested_by: expected a string")
    return ReplayRequest(stream, first, last, who)


class ReplayServer:
    """Serves replay requests, one at a time, for as long as `run()` runs. `publish(topic, payload)`
    sends one message at QoS 1 on the forwarder's current connection (False: not connected)."""

    def __init__(self, config: Any, buffer: Any, encoder: Encoder, publish: Callable[[str, bytes], bool]) -> None:
        self.topic = replay_topic(config.topic_root, config.agent.id)
        self.buffer = buffer
        self.encoder = encoder
        self.batch = config.mqtt.telemetry_batch
        self.publish = publish
        self.served = 0
        self.on_unavailable: Callable[[dict[str, Any]], None] | None = None  # the runtime writes the event
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUED)

    def on_message(self, loop: asyncio.AbstractEventLoop) -> Callable[..., None]:
        """paho's `on_message` (its network thread): a request on our topic goes to the loop."""
        def received(client, userdata, msg) -> None:
            if msg.topic == self.topic:
                loop.call_soon_threadsafe(self.submit, bytes(msg.payload))
        return received

    def submit(self, payload: bytes) -> None:
        """A request as it arrived (on the event loop)."""
        try:
            self._queue.put_nowait(payload)
        except asyncio.QueueFull:
            log.warning("replay request refused: too many waiting", waiting=QUEUED)

    async def run(self) -> None:
        while True:
            payload = await self._queue.get()
            try:
                request = parse_request(payload)
            except ValueError as err:
                log.warning("replay request ignored", reason=str(err), payload=payload[:200].decode(errors="replace"))
                continue
            try:
                await self._serve(request)
            except Exception as exc:  # noqa: BLE001 (a failed request is logged; the agent goes on)
                log.error("replay request failed", stream=request.stream, from_seq=request.from_seq,
                          to_seq=request.to_seq, requested_by=request.requested_by, error=str(exc))

    async def _serve(self, req: ReplayRequest) -> None:
        last = await self.buffer.last_seq(req.stream)
        to_seq = last if req.to_seq is None else min(req.to_seq, last)
        limit = MAX_SAMPLES if req.stream == "telemetry" else MAX_RECORDS
        truncated = to_seq - req.from_seq + 1 > limit
        if truncated:
            to_seq = req.from_seq + limit - 1
        log.info("replay requested", stream=req.stream, from_seq=req.from_seq, to_seq=req.to_seq,
                 serving_to=to_seq, requested_by=req.requested_by, truncated=truncated)
        if to_seq < req.from_seq:
            log.warning("replay request beyond the last seq: nothing to send", stream=req.stream,
                        from_seq=req.from_seq, last_seq=last, requested_by=req.requested_by)
            return
        sent, first_held = await (self._telemetry(req.from_seq, to_seq) if req.stream == "telemetry"
                                  else self._records(req.stream, req.from_seq, to_seq))
        if first_held is None or first_held > req.from_seq:
            gone_to = to_seq if first_held is None else first_held - 1
            if self.on_unavailable is not None:
                self.on_unavailable({"stream": req.stream, "seq_first": req.from_seq, "seq_last": gone_to,
                                     "requested_by": req.requested_by,
                                     "reason": "not in the buffer: purged after delivery (buffer.retention) or "
                                               "dropped and named by a gap event"})
            log.warning("replay: part of the range is not in the buffer (purged after delivery by retention, "
                        "or telemetry dropped and named by a gap event)",
                        stream=req.stream, not_available_from=req.from_seq,
                        not_available_to=gone_to,
                        requested_by=req.requested_by)
        self.served += 1
        log.info("replay served", stream=req.stream, from_seq=req.from_seq, to_seq=to_seq, messages=sent,
                 requested_by=req.requested_by)

    async def _send(self, topic: str, payload: bytes) -> None:
        while not self.publish(topic, payload):  # not connected: wait for the forwarder to reconnect
            await asyncio.sleep(0.5)
        await asyncio.sleep(1 / RATE)

    async def _records(self, stream: str, from_seq: int, to_seq: int) -> tuple[int, int | None]:
        sent, first_held, after = 0, None, from_seq - 1
        while after < to_seq:
            records = await self.buffer.read_records(stream, after, min(500, to_seq - after))
            if not records:
                break
            for r in records:
                if r.seq > to_seq:
                    return sent, first_held
                first_held = r.seq if first_held is None else first_held
                await self._send(*self.encoder.record(r, now_us()))
                sent += 1
            after = records[-1].seq
        return sent, first_held

    async def _telemetry(self, from_seq: int, to_seq: int) -> tuple[int, int | None]:
        sent, first_held = 0, None
        after = (from_seq - 1) // self.batch * self.batch  # the bucket's start: the same messages as first sent
        while after < to_seq:
            table = await self.buffer.read_telemetry(after, max(self.batch, 20_000), align=self.batch)
            if table.num_rows == 0:
                break
            rows = self.encoder.telemetry_rows(table)
            for start, end in rows.spans:
                if rows.seq[end - 1] < from_seq:
                    continue
                if rows.seq[start] > to_seq:
                    return sent, first_held
                first_held = max(rows.seq[start], from_seq) if first_held is None else first_held
                await self._send(*self.encoder.telemetry(rows, start, end, now_us()))
                sent += 1
            after = rows.seq[-1]
        return sent, first_held
