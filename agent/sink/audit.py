"""`linetap audit --db TARGET`: is what the sink holds complete and intact?

Per agent and stream: the seq ranges held, the seqs missing below the last one held (and which
of them `gap` events cover: telemetry the agent itself reported as dropped), chain breaks of
unit records and events (recomputed with `linetap.buffers.verify`, the same verifier as
`linetap verify`), and duplicates whose content differed (from `sink_problems`). Complete and
intact means: nothing missing that no gap event covers, no chain break, no differing duplicate.
Seqs start at 1, so records before the first one held count as missing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from linetap.agent.sink.db import Target
from linetap.agent.sink.store import chain_findings, record_envelope
from linetap.buffers.verify import _subtract  # the verifier's own interval arithmetic

__all__ = ["StreamAudit", "audit", "gap_events", "held_ranges", "holes", "render"]

STREAM_TABLES = ("units", "events", "telemetry")


@dataclass
class StreamAudit:
    agent: str
    stream: str
    held: int
    seq_first: int
    seq_last: int
    ranges: list[list[int]]
    missing: list[list[int]] = field(default_factory=list)  # not covered by a gap event
    missing_covered: list[list[int]] = field(default_factory=list)  # covered by gap events
    chain_breaks: list[dict[str, Any]] = field(default_factory=list)
    duplicates_differ: list[dict[str, Any]] = field(default_factory=list)
    unrecovered: list[dict[str, Any]] = field(default_factory=list)  # asked for, not recovered (sink_replays)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.chain_breaks or self.duplicates_differ)


def held_ranges(t: Target, stream: str, agent: str | None = None) -> dict[str, list[list[int]]]:
    """agent -> [[first, last], ...] of the contiguous seq runs held (gaps and islands, in SQL)."""
    where, params = ("WHERE agent = ?", (agent,)) if agent is not None else ("", ())
    rows = t.execute(f"SELECT agent, min(seq), max(seq) FROM (SELECT agent, seq, seq - row_number() OVER "
                     f"(PARTITION BY agent ORDER BY seq) AS grp FROM {stream} {where}) runs "
                     "GROUP BY agent, grp ORDER BY agent, min(seq)", params)
    out: dict[str, list[list[int]]] = {}
    for a, first, last in rows:
        out.setdefault(a, []).append([int(first), int(last)])
    return out


def holes(ranges: list[list[int]]) -> list[tuple[int, int]]:
    """The seqs missing below the last one held (seqs start at 1), from the held runs in order."""
    out, expected = [], 1
    for a, b in ranges:
        if a > expected:
            out.append((expected, a - 1))
        expected = b + 1
    return out


def gap_events(t: Target) -> dict[tuple[str, str], list[tuple[int, int]]]:
    out: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for agent, body in t.execute("SELECT agent, body FROM events WHERE kind = 'gap'"):
        b = orjson.loads(body)
        try:
            out.setdefault((agent, b.get("stream", "telemetry")), []).append((int(b["seq_first"]),
                                                                               int(b["seq_last"])))
        except (KeyError, TypeError, ValueError):
            continue
    return out


def audit(t: Target) -> list[StreamAudit]:
    gaps = gap_events(t)
    unrecovered = _unrecovered(t)
    problems: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for agent, stream, seq, detail in t.execute("SELECT agent, stream, seq, detail FROM sink_problems "
                                                "WHERE kind = 'duplicate_differs' ORDER BY agent, stream, seq"):
        problems.setdefault((agent, stream), []).append({"seq": int(seq), "detail": detail})
    out: list[StreamAudit] = []
    for stream in STREAM_TABLES:
        for agent, ranges in held_ranges(t, stream).items():
            held = sum(b - a + 1 for a, b in ranges)
            sa = StreamAudit(agent, stream, held, ranges[0][0], ranges[-1][1], ranges,
                             duplicates_differ=problems.pop((agent, stream), []),
                             unrecovered=unrecovered.get((agent, stream), []))
            covered = gaps.get((agent, stream), [])
            for hole in holes(ranges):
                left = _subtract(hole, covered)
                sa.missing.extend([list(x) for x in left])
                left_n = sum(y - x + 1 for x, y in left)
                if left_n < hole[1] - hole[0] + 1:
                    sa.missing_covered.extend([list(x) for x in _subtract(hole, left)])
            if stream != "telemetry":
                sa.chain_breaks = _chain(t, stream, agent)
            out.append(sa)
    for (agent, stream), probs in problems.items():  # differing duplicates of a stream with no row left
        out.append(StreamAudit(agent, stream, 0, 0, 0, [], duplicates_differ=probs))
    return out


def _unrecovered(t: Target) -> dict[tuple[str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for agent, stream, a, b, detail in t.execute("SELECT agent, stream, seq_first, seq_last, detail FROM "
                                                 "sink_replays WHERE outcome = 'unrecovered' ORDER BY noted_at"):
        out.setdefault((agent, stream), []).append({"seq_first": int(a), "seq_last": int(b), "detail": detail})
    return out


CHAIN_CHUNK = 5000  # records verified at a time (the last of the previous chunk comes along for its link)


def _chain(t: Target, stream: str, agent: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    carry: dict[int, dict[str, Any]] = {}
    after = 0
    while True:
        rows = t.execute(f"SELECT seq, id, recorded_at, body, prev_hash, hash FROM {stream} WHERE agent = ? "
                         f"AND seq > ? ORDER BY seq LIMIT {CHAIN_CHUNK}", (agent, after))
        if not rows:
            return out
        chunk = {int(seq): record_envelope(agent, stream, int(seq), tuple(rest)) for seq, *rest in rows}
        found = chain_findings(agent, stream, {**carry, **chunk}, list(chunk))
        out.extend({"seq": seq, "detail": detail} for seq, detail in found)
        after = max(chunk)
        carry = {after: chunk[after]}


def _spans(spans: list[list[int]]) -> str:
    return ", ".join(f"{a}" if a == b else f"{a}..{b}" for a, b in spans)


def render(result: list[StreamAudit], where: str) -> str:
    lines = [f"audit of {where}"]
    if not result:
        lines.append("no records held: nothing to audit (has `linetap sink` written to this database?)")
    for sa in result:
        n_missing = sum(b - a + 1 for a, b in sa.missing)
        lines.append(f"{sa.agent}/{sa.stream}: {sa.held} records held, seq {_spans(sa.ranges) or '-'}"
                     f"{'' if not sa.ok else ': complete, intact'}")
        if sa.missing:
            lines.append(f"  missing: {n_missing} record(s), seq {_spans(sa.missing)}: never arrived and no gap "
                         "event covers them (ask the agent to re-send: linetap replay LINE.yaml --stream "
                         f"{sa.stream} --from-seq {sa.missing[0][0]} --to-seq {sa.missing[0][1]}, agent stopped)")
        for u in sa.unrecovered:
            lines.append(f"  asked the agent for seq {_spans([[u['seq_first'], u['seq_last']]])}, not recovered: "
                         f"{u['detail']}")
        if sa.missing_covered:
            lines.append(f"  reported lost by the agent (gap events): seq {_spans(sa.missing_covered)}")
        for cb in sa.chain_breaks:
            lines.append(f"  chain break: {cb['detail']}")
        for d in sa.duplicates_differ:
            lines.append(f"  duplicate with other content: seq {d['seq']}: {d['detail']}")
    ok = bool(result) and all(sa.ok for sa in result)
    lines.append("OK: complete and intact" if ok else "FAILED: incomplete or not intact" if result else "FAILED")
    return "\n".join(lines)


def as_json(result: list[StreamAudit], where: str) -> str:
    ok = bool(result) and all(sa.ok for sa in result)
    return orjson.dumps({"db": where, "ok": ok,
                         "streams": [{**asdict(sa), "ok": sa.ok} for sa in result]},
                        option=orjson.OPT_INDENT_2).decode()
