"""The soak's per-serial check: the simulator's ground truth against the unit records captured.

Every unit the simulator completed between the first and the last serial the MES saw must have
exactly one unit record (complete or incomplete). A unit the agent could not see at all — it
started and ended while the agent was down (`kill -9` to restart) or the PLC was frozen — is
counted apart ("made during an outage"): nothing can record what nobody saw, but the count says
how many there were. So is a unit that started at most `IN_FLIGHT` before a `kill -9` and ended
before the agent was back: the agent saw at most its first polls and was killed before the
`unit_started` event reached the disk (what is not committed does not survive a kill -9 or a
power cut); counted apart, never hidden. Every other missing unit is a silent hole in the eDHR.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

IN_FLIGHT = 0.25  # s before a kill -9: poll (50 ms in the soak) + commit, with margin


@dataclass
class UnitCheck:
    expected: int = 0
    recorded: int = 0
    missing_in_outage: list[str] = field(default_factory=list)
    lost_in_flight: list[str] = field(default_factory=list)  # started just before a kill -9, see IN_FLIGHT
    missing: list[str] = field(default_factory=list)  # silent holes
    doubled: list[str] = field(default_factory=list)  # one serial, two unit records
    not_in_truth: list[str] = field(default_factory=list)  # e.g. the unit open at the final stop
    verdicts: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)  # of incomplete units
    marks: Counter = field(default_factory=Counter)  # started_before_agent, interrupted

    @property
    def ok(self) -> bool:
        return not self.missing and not self.doubled


def check_units(truth_file: Path, capture: Path, outages: list[tuple[float, float]],
                kills: list[tuple[float, float]] = ()) -> UnitCheck:
    """`outages`: wall-clock (start, end) spans in which the agent could not see the station;
    `kills`: (killed, back) of each kill -9."""
    truth = json.loads(truth_file.read_text())
    wall0, speed = truth["wall0"], truth["speed"]
    made = {u["serial"]: (wall0 + u["started_at"] / speed, wall0 + u["ended_at"] / speed) for u in truth["units"]}
    records: dict[int, dict] = {}
    for line in capture.read_bytes().splitlines():
        doc = json.loads(line)
        if doc.get("stream") == "units":
            records[doc["seq"]] = doc["body"]  # duplicates by seq are the same record
    by_serial: dict[str, list[dict]] = {}
    for body in records.values():
        by_serial.setdefault(body["serial"], []).append(body)
    check = UnitCheck()
    seen = sorted(s for s in by_serial if s in made)
    order = list(made)
    if not seen:
        return check
    window = order[order.index(seen[0]):order.index(seen[-1]) + 1]
    check.expected = len(window)
    for serial in window:
        bodies = by_serial.get(serial, [])
        if not bodies:
            start, end = made[serial]
            if any(a <= start and end <= b for a, b in outages):
                check.missing_in_outage.append(serial)
            elif any(k - IN_FLIGHT <= start < k and end <= b for k, b in kills):
                check.lost_in_flight.append(serial)
            else:
                check.missing.append(serial)
            continue
        check.recorded += 1
        if len(bodies) > 1:
            check.doubled.append(serial)
    check.not_in_truth = sorted(s for s in by_serial if s not in made)
    for body in records.values():
        check.verdicts[body["verdict"]] += 1
        if body["verdict"] == "incomplete":
            check.reasons[(body.get("reasons") or ["?"])[0].split(":")[0]] += 1
        for mark in ("started_before_agent", "interrupted"):
            if body.get(mark):
                check.marks[mark] += 1
    return check
