"""`linetap trace SERIAL --format html`: one printable file, nothing external, every value escaped,
the chain state on the page; against DuckDB and PostgreSQL, records landed by a real sink."""

from __future__ import annotations

import time
from html.parser import HTMLParser

import orjson
from sink_helpers import SinkProc, linetap, query
from test_sink_store import publish_all, sink_db  # noqa: F401 (sink_db: fixture, DuckDB and PostgreSQL)

from linetap.buffers.integrity import GENESIS, record_hash

AGENT = "line-5-pouch"
ROOT = "acme/cork/packaging/line5"
T0 = 1_796_083_200_000_000  # 2026-12-01T00:00Z, us
OPERATOR = 'OP-<script>alert("x")</script>&1'


def unit(seq: int, prev: str, station: str, verdict: str, value: float) -> dict:
    body = {"kind": "unit", "serial": "SN-070001", "lot": "FILM-LOT-2291", "station": station, "device": f"{station}-plc",
            "operator": OPERATOR, "started_at": T0 + seq * 10_000_000, "ended_at": T0 + seq * 10_000_000 + 2_050_000,
            "cycle_time": 2.05, "verdict": verdict, "reasons": [] if verdict == "pass" else ["leak_rate above 0.5"],
            "config_version": "sha256:" + "ab" * 32,
            "parameters": [{"name": "seal_temperature" if station == "sealer-1" else "leak_rate", "reduce": "max",
                            "value": value, "unit": "degC" if station == "sealer-1" else "mbar*l/s",
                            "low": 170.0 if station == "sealer-1" else None, "high": 185.0 if station == "sealer-1"
                            else 0.5, "spec": "WI-SEAL-007 rev B", "verdict": verdict},
                           {"name": "temperature_trace", "reduce": "trace", "value": [171.5, 176.25, 174.0],
                            "unit": "degC", "verdict": "pass"}]}
    rid, recorded_at = f"{AGENT}/units/{seq}", T0 + seq * 10_000_000 + 2_100_000
    h = record_hash(prev, id=rid, stream="units", seq=seq, recorded_at=recorded_at, body=body)
    return {"schema": "linetap.unit/2", "id": rid, "agent": AGENT, "stream": "units", "seq": seq, "sent_at": 1,
            "recorded_at": recorded_at, "prev_hash": prev, "hash": h, "body": body}


def nonconformance(seq: int, prev: str) -> dict:
    body = {"kind": "nonconformance", "ts": T0 + 25_000_000, "device": "leak-tester-plc", "station": "leak-tester",
            "serial": "SN-070001", "parameter": "leak_rate", "value": 0.72, "unit": "mbar*l/s", "limit": "high",
            "limit_value": 0.5, "spec": "WI-LEAK-003 rev A", "during_cycle": True}
    rid = f"{AGENT}/events/{seq}"
    h = record_hash(prev, id=rid, stream="events", seq=seq, recorded_at=T0 + 25_000_001, body=body)
    return {"schema": "linetap.event/2", "id": rid, "agent": AGENT, "stream": "events", "seq": seq, "sent_at": 1,
            "recorded_at": T0 + 25_000_001, "prev_hash": prev, "hash": h, "body": body}


class _Tags(HTMLParser):
    VOID = {"meta", "br", "hr", "img", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def page(db: str) -> tuple[str, _Tags]:
    r = linetap("trace", "SN-070001", "--db", db, "--format", "html")
    assert r.returncode == 0, r.stderr
    tags = _Tags()
    tags.feed(r.stdout)
    assert not tags.problems and not tags.stack, (tags.problems, tags.stack)
    return r.stdout, tags


def test_trace_html_is_one_printable_escaped_page(sink_db, broker, tmp_path):  # noqa: F811
    u1 = unit(1, GENESIS, "sealer-1", "pass", 178.5)
    u2 = unit(2, u1["hash"], "leak-tester", "fail", 0.72)
    sink = SinkProc(broker, sink_db, tmp_path / "sink.log")
    try:
        publish_all(broker, [(f"{ROOT}/sealer-1/units", orjson.dumps(u1)),
                             (f"{ROOT}/leak-tester/units", orjson.dumps(u2)),
                             (f"{ROOT}/leak-tester/events", orjson.dumps(nonconformance(1, GENESIS)))])
        time.sleep(1.5)
    finally:
        sink.stop()
    html, tags = page(sink_db)
    assert html.startswith("<!DOCTYPE html>")
    for external in ("http://", "https://", "src=", "<link", "@import", "url(", "<script"):
        assert external not in html.lower(), external
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;1" in html
    text = " ".join(" ".join(tags.text).split())
    assert text.index("Step 1: sealer-1") < text.index("Step 2: leak-tester")
    for shown in ("Device history record: SN-070001", "FILM-LOT-2291", "178.5", "WI-SEAL-007 rev B",
                  "trace of 3 points, 171.5 .. 176.25", "2026-12-01T00:00:10.000Z", "overall fail",
                  "leak_rate = 0.72 mbar*l/s beyond the high limit 0.5 (WI-LEAK-003 rev A), during the cycle",
                  "hash chains all verified", OPERATOR):
        assert shown in text, shown
    assert "NOT VERIFIED" not in text

    query(sink_db, "UPDATE units SET body = replace(body, 'FILM-LOT-2291', 'FILM-LOT-9999') WHERE seq = 1")
    _, tags = page(sink_db)
    text = " ".join(" ".join(tags.text).split())
    assert "1 record(s) whose hash chain does not verify" in text and "NOT VERIFIED" in text
    r = linetap("trace", "SN-070001", "--db", sink_db, "--format", "pdf")
    assert r.returncode == 2 and "expected text, json or html" in r.stderr
