"""`linetap trace SERIAL --format html`: the eDHR of one serial as one printable HTML file.

Nothing external: the styles are inline, there is no script, no font, no image to fetch, so the page
prints and archives the same in ten years. Every value comes from `trace.trace` and is escaped.
"""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape
from typing import Any

from linetap.agent.sink.trace import describe_event, format_ts

__all__ = ["render_html"]

_STYLE = """
body { font: 10.5pt/1.35 system-ui, sans-serif; margin: 1.5cm; color: #111; }
h1 { font-size: 16pt; margin: 0 0 .2em; } h2 { font-size: 12.5pt; margin: 1.2em 0 .3em; }
table { border-collapse: collapse; width: 100%; margin: .3em 0 .6em; page-break-inside: avoid; }
th, td { border: 1px solid #999; padding: 2px 5px; text-align: left; vertical-align: top; }
th { background: #eee; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.fail, .bad { color: #a00; font-weight: 600; } .pass, .ok { color: #060; }
.banner { border: 2px solid #a00; padding: .4em .6em; color: #a00; font-weight: 600; margin: .5em 0; }
.meta { color: #444; } code { font-size: 8.5pt; word-break: break-all; }
section { page-break-inside: avoid; }
@media print { body { margin: 1cm; } }
"""


def _e(value: Any) -> str:
    return "-" if value is None or value == "" else escape(str(value))


def _verdict(value: Any) -> str:
    cls = "pass" if value == "pass" else "fail" if value in ("fail", "incomplete") else ""
    return f'<span class="{cls}">{_e(value)}</span>'


def _chain(chain: dict[str, Any]) -> str:
    if chain["verified"]:
        return '<span class="ok">verified</span>'
    return '<span class="bad">NOT VERIFIED: ' + escape("; ".join(chain["problems"])) + "</span>"


def _value(value: Any) -> str:
    if isinstance(value, list):
        numbers = [v for v in value if isinstance(v, int | float) and not isinstance(v, bool)]
        span = f", {min(numbers)} .. {max(numbers)}" if numbers else ""
        return f"trace of {len(value)} points{escape(span)}"
    return _e(value)


def _rows(pairs: list[tuple[str, str]]) -> str:
    return "".join(f"<tr><th>{escape(k)}</th><td>{v}</td></tr>" for k, v in pairs)


def _unit(u: dict[str, Any], step: int) -> str:
    ct = "-" if u["cycle_time"] is None else f"{escape(str(u['cycle_time']))} s"
    reasons = "; ".join(u["reasons"] or [])
    head = _rows([("station", _e(u["station"])), ("device", _e(u["device"])), ("operator", _e(u["operator"])),
                  ("lot", _e(u["lot"])), *(("component " + name, _e(value)) for name, value in u["components"].items()),
                  ("start", _e(format_ts(u["started_at"]))), ("end", _e(format_ts(u["ended_at"]))),
                  ("cycle time", ct), ("verdict", _verdict(u["verdict"]) + (f" ({escape(reasons)})" if reasons else "")),
                  ("config version", f"<code>{_e(u['config_version'])}</code>"),
                  ("record", f"{_e(u['id'])} (agent {_e(u['agent'])})"),
                  ("hash", f"<code>{_e(u['hash'])}</code>"), ("chain", _chain(u["chain"]))])
    params = "".join(
        f"<tr><td>{_e(p.get('name'))}</td><td class=\"num\">{_value(p.get('value'))}</td><td>{_e(p.get('unit'))}</td>"
        f"<td class=\"num\">{_e(p.get('low'))}</td><td class=\"num\">{_e(p.get('high'))}</td><td>{_e(p.get('spec'))}</td>"
        f"<td>{_verdict(p.get('verdict'))}{(' (' + escape(str(p['reason'])) + ')') if p.get('reason') else ''}</td></tr>"
        for p in u["parameters"])
    table = ("<table><tr><th>parameter</th><th>value</th><th>unit</th><th>low</th><th>high</th><th>spec</th>"
             f"<th>verdict</th></tr>{params}</table>") if params else "<p>no parameters recorded</p>"
    return f"<section><h2>Step {step}: {_e(u['station'])}</h2><table>{head}</table>{table}</section>"


def render_html(result: dict[str, Any], source: str, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    units, events = result["units"], result["events"]
    unverified = [r for r in (*units, *events) if not r["chain"]["verified"]]
    failed = [u for u in units if u["verdict"] != "pass"]
    verdict = "fail" if failed or any(e["kind"] == "nonconformance" for e in events) else \
        "pass" if units else "incomplete"
    banner = (f'<div class="banner">{len(unverified)} record(s) whose hash chain does not verify: this history '
              "may have been altered or is incomplete.</div>") if unverified else ""
    summary = _rows([("steps", str(len(units))), ("overall", _verdict(verdict)),
                     ("non-conformances / incomplete", str(len(events))),
                     ("hash chains", '<span class="ok">all verified</span>' if not unverified else
                      f'<span class="bad">{len(unverified)} not verified</span>')])
    ev_rows = "".join(f"<tr><td>{_e(format_ts(e['body'].get('ts')))}</td><td>{_e(e['kind'])}</td>"
                      f"<td>{_e(e['body'].get('station'))}</td><td>{escape(describe_event(e))}</td>"
                      f"<td>{_chain(e['chain'])}</td></tr>" for e in events)
    ev_table = ("<h2>Non-conformances and incomplete units</h2><table><tr><th>time</th><th>kind</th><th>station</th>"
                f"<th>what</th><th>chain</th></tr>{ev_rows}</table>") if events else ""
    steps = "".join(_unit(u, i) for i, u in enumerate(units, start=1))
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>eDHR {_e(result['serial'])}</title><style>{_STYLE}</style></head><body>"
            f"<h1>Device history record: {_e(result['serial'])}</h1>"
            f"<p class=\"meta\">from {_e(source)}, generated {_e(now.isoformat(timespec='seconds'))} by linetap trace; "
            "times in UTC</p>"
            f"{banner}<table>{summary}</table>{steps}{ev_table}"
            "<p class=\"meta\">Each record's hash is SHA-256 over the previous record's hash and the record's RFC 8785 "
            "canonical JSON; \u201cverified\u201d means its hash, its link to its predecessor and its successor's link "
            "to it all recompute.</p></body></html>\n")
