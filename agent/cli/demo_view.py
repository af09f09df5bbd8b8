"""The live view of `linetap demo`: a dashboard redrawn in place on a terminal, one line per refresh otherwise.

A pipe, a log file or CI output gets a compact line of counts per second (no escape codes, no
screen-sized blocks to scroll through); a terminal gets a `rich.live.Live` dashboard.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

from rich.console import Console
from rich.live import Live
from rich.text import Text

from linetap.drivers.samples import Quality

SHOWN_TAGS = 12  # live values per device: the station's own tags, not the whole bulk block


@dataclass(frozen=True)
class Frame:
    """What one refresh shows: the agent's side and what the MES stand-in received."""

    elapsed: float
    buffered: int  # samples the agent committed to its buffer
    samples: int  # samples the MES stand-in received
    messages: int
    units: int
    events: int
    buffer: Sequence[Any] = ()  # the buffer's StreamStats per stream
    devices: Mapping[str, Any] = field(default_factory=dict)  # name -> the agent's DeviceStatus
    recent: Sequence[str] = ()  # the latest unit records and events, described

    def rate(self, count: int) -> float:
        return count / max(self.elapsed, 1e-6)


class Display(Protocol):
    def show(self, frame: Frame) -> None: ...
    def close(self) -> None: ...


class LineDisplay:
    """Not a terminal: exactly one line per frame, so logs and CI output stay readable."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def show(self, frame: Frame) -> None:
        self.out.write(status_line(frame) + "\n")
        self.out.flush()

    def close(self) -> None:
        pass


class LiveDisplay:
    """A terminal: the dashboard redrawn in place (the last frame stays on screen after `close`)."""

    def __init__(self, console: Console, header: Sequence[str]) -> None:
        self.header = list(header)
        # refreshed by `show` only: the frames come once a second and an auto-refresh thread would add nothing
        self._live = Live(console=console, auto_refresh=False, transient=False)
        self._live.start()

    def show(self, frame: Frame) -> None:
        self._live.update(Text("\n".join([*self.header, *dashboard_lines(frame)])), refresh=True)

    def close(self) -> None:
        self._live.stop()


def make_display(out: TextIO, header: Sequence[str]) -> Display:
    if _is_tty(out):
        return LiveDisplay(Console(file=out), header)
    out.write("\n".join(header) + "\n")  # once, not with every line
    return LineDisplay(out)


def _is_tty(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError, OSError):  # closed or not a real file
        return False


def status_line(frame: Frame) -> str:
    unsent = sum(s.pending for s in frame.buffer)
    devices = ", ".join(f"{name} {dev.state}" for name, dev in frame.devices.items())
    return (f"[{frame.elapsed:4.0f}s] MES received {frame.samples:,} samples ({frame.rate(frame.samples):,.0f}/s), "
            f"{frame.units} unit records, {frame.events} events | agent buffered {frame.buffered:,}, "
            f"unsent {unsent:,}" + (f" | {devices}" if devices else ""))


def dashboard_lines(frame: Frame) -> list[str]:
    lines = [
        "",
        f"  agent buffered {frame.buffered:>10,} samples  ({frame.rate(frame.buffered):,.0f}/s)",
        f"  MES received   {frame.samples:>10,} samples  ({frame.rate(frame.samples):,.0f}/s) "
        f"in {frame.messages:,} messages",
        f"                 {frame.units:>10,} unit records, {frame.events:,} events",
    ]
    for s in frame.buffer:
        lines.append(f"  buffer {s.stream:<9} last seq {s.last_seq:>10}  acked {s.cursor:>10}  unsent {s.pending:>8}")
    for name, dev in frame.devices.items():
        lines.append(f"  device {name}: {dev.state}{' (' + dev.reason + ')' if dev.reason else ''}")
        lines.extend(_tag_lines(dev.last_batch))
    if frame.recent:
        lines.append("  latest records:")
        lines.extend(f"    {r}" for r in frame.recent)
    return lines


def _tag_lines(batch) -> list[str]:
    if batch is None:
        return []
    lines = []
    for tag, value, quality in list(zip(batch.tag, batch.value, batch.quality, strict=True))[:SHOWN_TAGS]:
        q = "" if quality == Quality.GOOD else f"  [{Quality(quality).name.lower()}]"
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        lines.append(f"      {tag:<22} {shown}{q}")
    return lines
