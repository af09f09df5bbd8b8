"""`linetap verify`: check a capture of what the MES received (or an export) for completeness.

Input: JSON Lines, one payload envelope per line (as published on MQTT, or as written by
`linetap export --format jsonl`); a line may also be `{"topic": ..., "payload": {...}}`.
Per agent and stream it reports:
- unit records / events: a broken hash chain (altered content, a record left out or reordered),
  missing seqs, duplicates whose content differs, delivery out of order;
- telemetry: missing seqs not covered by a `gap` event, duplicates whose content differs,
  out-of-order delivery.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from linetap.buffers.integrity import GENESIS, canonical_json, chain_version


@dataclass
class Finding:
    where: str  # "file:line"
    agent: str
    stream: str
    kind: str  # broken_chain | missing | duplicate_differs | out_of_order | unreadable
    detail: str

    def __str__(self) -> str:
        return f"{self.where}: {self.agent}/{self.stream}: {self.kind}: {self.detail}"


@dataclass
class StreamCheck:
    records: dict[int, tuple[str, Any]] = field(default_factory=dict)  # seq -> (where, content)
    last_first_seen: int = 0
    deliveries: int = 0
    duplicates: int = 0


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # "agent/stream" -> numbers

    @property
    def ok(self) -> bool:
        return not self.findings


def _lines(paths: Iterable[Path]):
    for path in paths:
        with open(path, "rb") as fh:
            for n, raw in enumerate(fh, 1):
                if raw.strip():
                    yield f"{path}:{n}", raw


def verify(paths: Iterable[Path]) -> Report:
    return verify_lines(_lines(paths))


def verify_lines(lines: Iterable[tuple[str, bytes]]) -> Report:
    """`verify` over (where, raw JSON) pairs: for captures held in memory (e.g. `linetap demo`'s MES stand-in)."""
    report = Report()
    streams: dict[tuple[str, str], StreamCheck] = {}
    gaps: dict[str, list[tuple[int, int]]] = {}

    def check(agent: str, stream: str) -> StreamCheck:
        return streams.setdefault((agent, stream), StreamCheck())

    def see(where: str, agent: str, stream: str, seq: int, content: Any) -> None:
        sc = check(agent, stream)
        sc.deliveries += 1
        if seq in sc.records:
            sc.duplicates += 1
            first_where, first = sc.records[seq]
            if first != content:
                report.findings.append(Finding(where, agent, stream, "duplicate_differs",
                                               f"seq {seq} differs from its first delivery at {first_where}"))
            return
        if seq < sc.last_first_seen:
            report.findings.append(Finding(where, agent, stream, "out_of_order",
                                           f"seq {seq} arrived after seq {sc.last_first_seen}"))
        sc.last_first_seen = max(sc.last_first_seen, seq)
        sc.records[seq] = (where, content)

    for where, raw in lines:
        try:
            doc = orjson.loads(raw)
            if "payload" in doc and "schema" not in doc:
                doc = doc["payload"]
            agent, stream = doc["agent"], doc["stream"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            report.findings.append(Finding(where, "?", "?", "unreadable", f"not a linetap payload ({exc})"))
            continue
        if stream == "telemetry":
            samples = doc["samples"]
            for i in range(doc["count"]):
                content = tuple(samples[k][i] for k in ("tag", "value", "quality", "reason", "source_ts", "agent_ts"))
                see(where, agent, stream, doc["seq"] + i, (doc["device"], *content))
        elif stream in ("units", "events"):
            see(where, agent, stream, doc["seq"], {k: doc.get(k) for k in ("id", "recorded_at", "body", "prev_hash",
                                                                              "hash")})
            body = doc.get("body") or {}
            if stream == "events" and body.get("kind") == "gap" and body.get("stream") == "telemetry":
                gaps.setdefault(agent, []).append((int(body["seq_first"]), int(body["seq_last"])))

    for (agent, stream), sc in sorted(streams.items()):
        seqs = sorted(sc.records)
        report.counts[f"{agent}/{stream}"] = {"received": sc.deliveries, "unique": len(seqs),
                                              "duplicates": sc.duplicates, "first": seqs[0] if seqs else 0,
                                              "last": seqs[-1] if seqs else 0}
        covered = gaps.get(agent, []) if stream == "telemetry" else []
        _missing(report, agent, stream, seqs, covered, sc)
        if stream in ("units", "events"):
            _chain(report, agent, stream, seqs, sc)
    return report


def _missing(report: Report, agent: str, stream: str, seqs: list[int], covered, sc: StreamCheck) -> None:
    expected = seqs[0] if seqs else 1
    for seq in seqs:
        if seq > expected:
            holes = [(a, b) for a, b in _subtract((expected, seq - 1), covered)]
            for a, b in holes:
                where = sc.records[seq][0]
                report.findings.append(Finding(where, agent, stream, "missing",
                                               f"seq {a}" + (f"..{b} ({b - a + 1} records)" if b > a else "")
                                               + " never arrived and no gap event covers it"))
        expected = seq + 1


def _subtract(span: tuple[int, int], covered: list[tuple[int, int]]) -> list[tuple[int, int]]:
    parts = [span]
    for c0, c1 in covered:
        nxt = []
        for a, b in parts:
            if c1 < a or c0 > b:
                nxt.append((a, b))
                continue
            if a < c0:
                nxt.append((a, c0 - 1))
            if b > c1:
                nxt.append((c1 + 1, b))
        parts = nxt
    return parts


def _chain(report: Report, agent: str, stream: str, seqs: list[int], sc: StreamCheck) -> None:
    prev_hash: str | None = None
    prev_seq: int | None = None
    for seq in seqs:
        where, rec = sc.records[seq]
        expected_prev = GENESIS if seq == 1 else prev_hash if prev_seq == seq - 1 else None
        if expected_prev is not None and rec["prev_hash"] != expected_prev:
            report.findings.append(Finding(where, agent, stream, "broken_chain",
                                           f"seq {seq}: prev_hash does not match the hash of seq {seq - 1}"))
        version = chain_version(rec["hash"], rec["prev_hash"], id=rec["id"], stream=stream, seq=seq,
                                recorded_at=rec["recorded_at"], body=rec["body"])
        if version is None:  # neither RFC 8785 (version 2) nor the version 1 canonical form
            report.findings.append(Finding(where, agent, stream, "broken_chain",
                                           f"seq {seq}: content does not match its hash (altered)"))
        prev_hash, prev_seq = rec["hash"], seq


def render(report: Report) -> str:
    lines = []
    for key, c in report.counts.items():
        lines.append(f"{key}: {c['unique']} records (seq {c['first']}..{c['last']}), {c['received']} deliveries, "
                     f"{c['duplicates']} duplicates")
    lines.extend(str(f) for f in report.findings)
    lines.append("OK: complete, in order, chains intact" if report.ok else f"FAILED: {len(report.findings)} finding(s)")
    return "\n".join(lines)


__all__ = ["Finding", "Report", "canonical_json", "render", "verify", "verify_lines"]
