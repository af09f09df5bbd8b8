"""The replays the sink asks agents for: seqs missing between the records it holds that no gap
event covers.

A broker drops QoS 1 messages for a subscriber that falls behind (Mosquitto's
`max_queued_messages`, 1000 by default): the sink sees them as holes, and the agent's buffer
still holds them. A hole is also expected for a while without any loss: shared-subscription
workers land records out of order, and the broker re-sends what a killed sink had not
acknowledged. So a hole is asked for only once it has been open `after` seconds (60): on
`{root}/_agent/{agent}/replay` (QoS 1, the agent's `replay_server`), `requested_by` the sink's
client id; again after 2, 4, 8 ... times `after` (at most `MAX_BACKOFF`), `attempts` times in
all, then closed as `unrecovered` (no answer). An agent that no longer holds the range (purged
after delivery by `buffer.retention`) says so with a `replay_unavailable` event: the range
closes at once as `unrecovered` with the agent's reason, and is not asked for again.

Every request and every outcome is a row of `sink_replays`; `linetap audit` names what could
not be recovered. The tracker lives in the sink process: a restarted sink sees the holes again
and waits `after` again. Several sinks on one database may each ask for a range: the agent
serves it twice, the records land once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from linetap.agent.logs import get_logger
from linetap.agent.sink.audit import gap_events, holes
from linetap.agent.sink.db import Target
from linetap.buffers.verify import _subtract  # the verifier's own interval arithmetic

__all__ = ["REQUEST_SCHEMA", "Recovery", "topic_root"]

log = get_logger("linetap.agent.sink")

REQUEST_SCHEMA = "linetap.replay_request/1"
CHECK_EVERY = 5.0  # s between looks at the holes
MAX_BACKOFF = 3600.0  # s: the longest wait between two requests for one range

Span = tuple[int, int]
Key = tuple[str, str]  # (agent, stream)


def topic_root(topic: str) -> str | None:
    """The agent's topic root from a topic it publishes on: `{root}/{station}/{stream}` or
    `{root}/_agent/{id}/status`."""
    if "/_agent/" in topic:
        return topic.split("/_agent/", 1)[0]
    parts = topic.rsplit("/", 2)
    return parts[0] if len(parts) == 3 else None


def _minus(spans: list[Span], cut: list[Span]) -> list[Span]:
    return [p for s in spans for p in _subtract(s, cut)] if cut else list(spans)


def _meets(a: Span, b: Span) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


@dataclass
class _Hole:
    first_seen: float
    next_at: float
    attempts: int = 0  # towards the limit: back to 0 when part of the range arrives
    asked: int = 0  # requests in all
    asked_span: Span | None = None  # the range first asked for (what the outcome is recorded for)


def _inherit(before: list[_Hole], now: float, after: float, progress: bool) -> _Hole:
    spans = [h.asked_span for h in before if h.asked_span is not None]
    return _Hole(first_seen=min(h.first_seen for h in before),
                 next_at=now + after if progress else min(h.next_at for h in before),
                 attempts=0 if progress else max(h.attempts for h in before),
                 asked=max(h.asked for h in before),
                 asked_span=(min(a for a, _ in spans), max(b for _, b in spans)) if spans else None)


class Recovery:
    """Looks at the holes every `CHECK_EVERY` s (`check`, from the sink's main loop) and asks for
    the old ones. `publish(topic, payload)` sends at QoS 1 on the sink's connection (False: not now)."""

    def __init__(self, target: Target, requested_by: str, publish: Callable[[str, bytes], bool], *,
                 after: float = 60.0, attempts: int = 6) -> None:
        self.t = target
        self.requested_by = requested_by
        self.publish = publish
        self.after = after
        self.attempts = attempts
        self.roots: dict[str, str] = {}  # agent -> topic root, from what it publishes
        self.tracked: dict[Key, dict[Span, _Hole]] = {}
        self.unrecovered: dict[Key, list[Span]] = {}
        self.asked = 0
        self._rootless: set[str] = set()
        for agent, stream, a, b in self.t.execute("SELECT agent, stream, seq_first, seq_last FROM sink_replays "
                                                  "WHERE outcome = 'unrecovered'"):
            self.unrecovered.setdefault((agent, stream), []).append((int(a), int(b)))

    def saw(self, agent: str, topic: str) -> None:
        root = topic_root(topic)
        if root is not None:
            self.roots[agent] = root

    def check(self, now: float) -> None:
        rows: list[tuple[str, str, str, int, Span, str]] = []  # agent, stream, outcome, attempt, span, detail
        raw: dict[Key, list[Span]] = {}
        for agent, stream, ranges in self.t.execute("SELECT agent, stream, ranges FROM sink_streams"):
            if found := holes(orjson.loads(ranges)):
                raw[(agent, stream)] = found
        if raw or self.tracked:
            covered = gap_events(self.t)
            self._note_unavailable(raw, rows)
            for key in sorted(set(raw) | set(self.tracked)):
                self._follow(key, raw.get(key, []), covered.get(key, []), now, rows)
        if rows:
            at = datetime.now(UTC)
            with self.t.transaction():
                self.t.executemany("INSERT INTO sink_replays VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                   [(a, s, span[0], span[1], outcome, n, detail, at)
                                    for a, s, outcome, n, span, detail in rows])

    def _note_unavailable(self, raw: dict[Key, list[Span]], rows: list) -> None:
        """What agents said they no longer hold (`replay_unavailable` events), for ranges still missing."""
        if not any(h.asked for tracked in self.tracked.values() for h in tracked.values()):
            return
        for agent, body in self.t.execute("SELECT agent, body FROM events WHERE kind = 'replay_unavailable'"):
            b = orjson.loads(body)
            key = (agent, b.get("stream"))
            try:
                span = (int(b["seq_first"]), int(b["seq_last"]))
            except (KeyError, TypeError, ValueError):
                continue
            for piece in _minus([span], self.unrecovered.get(key, [])):
                for hole in raw.get(key, []):
                    if _meets(piece, hole):
                        part = (max(piece[0], hole[0]), min(piece[1], hole[1]))
                        self.unrecovered.setdefault(key, []).append(part)
                        rows.append((*key, "unrecovered", 0, part, f"the agent no longer holds it: "
                                     f"{b.get('reason', 'not in its buffer')}"))
                        log.error("sink cannot recover a range: the agent no longer holds it", agent=agent,
                                  stream=key[1], seq_first=part[0], seq_last=part[1], reason=b.get("reason"))

    def _follow(self, key: Key, raw: list[Span], covered: list[Span], now: float, rows: list) -> None:
        agent, stream = key
        missing = _minus(_minus(raw, covered), self.unrecovered.get(key, []))
        old = self.tracked.get(key, {})
        new: dict[Span, _Hole] = {}
        for span in missing:
            before = [h for s, h in old.items() if _meets(s, span)]
            if not before:
                new[span] = _Hole(first_seen=now, next_at=now + self.after)
                continue
            new[span] = _inherit(before, now, self.after, any(s != span for s in old if _meets(s, span)))
        for span, h in old.items():  # closed: nothing of it is still missing
            if h.asked and not any(_meets(span, s) for s in missing):
                first = h.asked_span or span
                still = [p for p in raw if _meets(p, first)]
                if not still:
                    rows.append((agent, stream, "recovered", h.asked, first, "arrived after the request"))
                    log.info("sink recovered a range", agent=agent, stream=stream, seq_first=first[0],
                             seq_last=first[1], requests=h.asked)
                elif not _minus(still, covered):
                    rows.append((agent, stream, "covered", h.asked, first,
                                 "a gap event of the agent names it: reported lost at the source"))
        for span, h in new.items():
            if now < h.next_at:
                continue
            if h.attempts >= self.attempts:
                self.unrecovered.setdefault(key, []).append(span)
                rows.append((agent, stream, "unrecovered", h.attempts, span,
                             f"not received after {h.attempts} requests over {now - h.first_seen:.0f} s"))
                log.error("sink gave up on a range: not received after its requests", agent=agent, stream=stream,
                          seq_first=span[0], seq_last=span[1], attempts=h.attempts)
                continue
            if self._ask(agent, stream, span):
                h.attempts += 1
                h.asked += 1
                h.asked_span = h.asked_span or span
                h.next_at = now + min(self.after * 2 ** h.attempts, MAX_BACKOFF)
                rows.append((agent, stream, "requested", h.asked, span,
                             f"open {now - h.first_seen:.0f} s; asked by {self.requested_by}"))
        self.tracked[key] = {s: h for s, h in new.items() if not (key in self.unrecovered
                                                                  and s in self.unrecovered[key])}
        if not self.tracked[key]:
            del self.tracked[key]

    def _ask(self, agent: str, stream: str, span: Span) -> bool:
        root = self.roots.get(agent)
        if root is None:
            if agent not in self._rootless:
                self._rootless.add(agent)
                log.warning("sink cannot ask for a replay yet: no message of the agent seen since the sink "
                            "started, so its topic root is unknown", agent=agent, stream=stream)
            return False
        topic = f"{root}/_agent/{agent}/replay"
        payload = orjson.dumps({"schema": REQUEST_SCHEMA, "stream": stream, "from_seq": span[0],
                                "to_seq": span[1], "requested_by": self.requested_by})
        if not self.publish(topic, payload):
            return False
        self.asked += 1
        log.warning("sink asked for a replay", agent=agent, stream=stream, seq_first=span[0], seq_last=span[1],
                    topic=topic)
        return True
