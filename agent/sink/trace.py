"""`linetap trace SERIAL --db TARGET`: the eDHR of one serial from the sink's database.

Every unit record of the serial in time order (station, operator, lot and components (genealogy),
start/end, cycle time, every parameter with value, unit, limits, spec and verdict), every `nonconformance` and
`unit_incomplete` event of it, and for each record whether the chain around it verifies: its
own hash, the link to its predecessor and its successor's link to it (linetap's verifier).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from linetap.agent.sink.db import Target
from linetap.agent.sink.store import RECORD_COLUMNS, chain_findings, record_envelope

__all__ = ["describe_event", "format_ts", "render_text", "trace"]

TRACE_EVENT_KINDS = ("nonconformance", "unit_incomplete")


def _chain_state(t: Target, stream: str, agent: str, seq: int) -> dict[str, Any]:
    rows = t.execute(f"SELECT seq, {', '.join(RECORD_COLUMNS)} FROM {stream} WHERE agent = ? AND seq IN (?, ?, ?)",
                     (agent, seq - 1, seq, seq + 1))
    records = {int(s): record_envelope(agent, stream, int(s), tuple(rest)) for s, *rest in rows}
    succ = {seq + 1} if seq + 1 in records else set()
    findings = chain_findings(agent, stream, records, [seq, *succ], links_only=succ)
    state = {"verified": not findings, "problems": [d for _, d in findings]}
    if seq > 1 and seq - 1 not in records:
        state["verified"] = False
        state["problems"].append(f"seq {seq - 1} (the predecessor) is not held: the link cannot be checked")
    return state


def trace(t: Target, serial: str) -> dict[str, Any]:
    units = []
    for agent, seq, rid, body, hash_ in t.execute(
            "SELECT agent, seq, id, body, hash FROM units WHERE serial = ? "
            "ORDER BY started_at NULLS LAST, recorded_at, agent, seq", (serial,)):
        b = orjson.loads(body)
        units.append({"agent": agent, "seq": int(seq), "id": rid, "station": b.get("station"),
                      "device": b.get("device"), "operator": b.get("operator"), "lot": b.get("lot"),
                      "components": b.get("components") or {},
                      "started_at": b.get("started_at"), "ended_at": b.get("ended_at"),
                      "cycle_time": b.get("cycle_time"), "verdict": b.get("verdict"), "reasons": b.get("reasons", []),
                      "config_version": b.get("config_version"), "parameters": b.get("parameters", []),
                      "hash": hash_, "chain": _chain_state(t, "units", agent, int(seq)), "body": b})
    marks = ", ".join("?" * len(TRACE_EVENT_KINDS))
    events = []
    for agent, seq, kind, body in t.execute(
            f"SELECT agent, seq, kind, body FROM events WHERE serial = ? AND kind IN ({marks}) "
            "ORDER BY ts NULLS LAST, recorded_at, agent, seq", (serial, *TRACE_EVENT_KINDS)):
        events.append({"agent": agent, "seq": int(seq), "kind": kind, "body": orjson.loads(body),
                       "chain": _chain_state(t, "events", agent, int(seq))})
    return {"serial": serial, "units": units, "events": events}


def format_ts(us: Any) -> str:
    if not isinstance(us, int):
        return "-"
    return datetime.fromtimestamp(us / 1e6, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _num(v: Any) -> str:
    return "-" if v is None else str(v)


def _chain_text(chain: dict[str, Any]) -> str:
    return "chain verified" if chain["verified"] else "CHAIN NOT VERIFIED: " + "; ".join(chain["problems"])


def render_text(result: dict[str, Any]) -> str:
    lines = [f"serial {result['serial']}: {len(result['units'])} unit record(s), {len(result['events'])} "
             "non-conformance / incomplete event(s)"]
    for u in result["units"]:
        ct = "-" if u["cycle_time"] is None else f"{u['cycle_time']} s"
        lines.append(f"\n{u['station']} (device {u['device']}, agent {u['agent']}, record {u['id']})")
        lines.append(f"  operator {u['operator'] or '-'}   lot {u['lot'] or '-'}" + "".join(
            f"   {name} {_num(value)}" for name, value in u["components"].items()))
        lines.append(f"  start {format_ts(u['started_at'])}   end {format_ts(u['ended_at'])}   cycle time {ct}")
        reasons = f" ({'; '.join(u['reasons'])})" if u["reasons"] else ""
        lines.append(f"  verdict {u['verdict']}{reasons}   config {u['config_version']}   {_chain_text(u['chain'])}")
        for p in u["parameters"]:
            value = p.get("value")
            if isinstance(value, list):
                value = f"trace of {len(value)} points"
            limits = "" if p.get("low") is None and p.get("high") is None else \
                f"   limits {_num(p.get('low'))}..{_num(p.get('high'))}"
            unit = f" {p['unit']}" if p.get("unit") else ""
            spec = f"   {p['spec']}" if p.get("spec") else ""
            why = f" ({p['reason']})" if p.get("reason") else ""
            lines.append(f"    {p.get('name')}: {_num(value)}{unit}{limits}{spec}   {p.get('verdict', '-')}{why}")
    if result["events"]:
        lines.append("")
    for e in result["events"]:
        b = e["body"]
        lines.append(f"{format_ts(b.get('ts'))}  {e['kind']} at {b.get('station')}: {describe_event(e)}   "
                     f"{_chain_text(e['chain'])}")
    return "\n".join(lines)


def describe_event(e: dict[str, Any]) -> str:
    """What a traced event says, in words (text and HTML pages)."""
    b = e["body"]
    if e["kind"] == "nonconformance":
        return (f"{b.get('parameter')} = {b.get('value')} {b.get('unit') or ''} beyond the {b.get('limit')} "
                f"limit {b.get('limit_value')} ({b.get('spec') or 'no spec'})"
                + (", during the cycle" if b.get("during_cycle") else ""))
    return str(b.get("reason") or ", ".join(b.get("reasons") or []) or "incomplete")
