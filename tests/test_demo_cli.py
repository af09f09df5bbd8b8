"""`linetap demo` through the installed console script: its exit code tells whether the MES received data.

Runs the `linetap` script next to sys.executable (what a user runs), with the working and temporary
folders under a path with a space and a hyphen. The demo starts its own broker on a free port.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from linetap.agent.cli.demo import DemoResult
from linetap.agent.cli.demo_view import Frame, LineDisplay, LiveDisplay, make_display
from linetap.buffers.integrity import GENESIS, record_hash
from linetap.buffers.verify import verify_lines
from linetap.simulators.net import free_port

LINETAP = Path(sys.executable).with_name("linetap")
SUMMARY = re.compile(r"received ([\d,]+) samples, (\d+) unit records and (\d+) events")
PROGRESS = re.compile(r"^\[\s*\d+s\] MES received ", re.MULTILINE)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "line pc-demo"
    path.mkdir()
    return path


def linetap(workdir: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    # TMPDIR too: the demo's buffer and broker config then live under the awkward path as well
    env = {**os.environ, "TMPDIR": str(workdir), "COLUMNS": "200"}
    return subprocess.run([str(LINETAP), *args], capture_output=True, text=True, cwd=workdir, env=env,
                          timeout=timeout)


def _flat(text: str) -> str:
    """Error text without the box and line wrapping typer draws around it."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def test_installed_script_exists() -> None:
    assert LINETAP.is_file(), f"no console script at {LINETAP}: is linetap installed in this venv?"


@pytest.mark.timeout(120)
def test_demo_exits_0_when_the_mes_received_everything(workdir: Path) -> None:
    result = linetap(workdir, "demo", "--duration", "12", timeout=100)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Traceback" not in output
    found = SUMMARY.search(result.stdout)
    assert found, result.stdout
    samples, units, events = int(found[1].replace(",", "")), int(found[2]), int(found[3])
    assert samples > 0 and units > 0 and events > 0, found[0]
    assert "hash chains: verified" in result.stdout
    assert "linetap demo: OK:" in result.stdout
    # stdout is a pipe: one plain line of counts per second, no escape codes, no screen-sized blocks
    assert "\x1b[" not in result.stdout
    assert 8 <= len(PROGRESS.findall(result.stdout)) <= 14, result.stdout
    assert str(workdir) in result.stdout  # the buffer is kept under TMPDIR, path with space and all


def test_unreachable_broker_is_one_line_exit_1(workdir: Path) -> None:
    port = free_port()  # bound and closed again: nothing listens there
    result = linetap(workdir, "demo", "--broker", f"127.0.0.1:{port}", "--duration", "5")
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip() == f"linetap demo: cannot reach the broker at 127.0.0.1:{port}: connection refused"
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize(("args", "option"), [
    (["--interval", "abc"], "--interval"),
    (["--interval", "0s"], "--interval"),
    (["--broker", "nonsense"], "--broker"),
    (["--broker", "127.0.0.1:99999"], "--broker"),
    (["--duration", "-1"], "--duration"),
    (["--duration", "abc"], "--duration"),
    (["--tags", "-5"], "--tags"),
])
def test_bad_input_is_a_usage_error_exit_2(workdir: Path, args: list[str], option: str) -> None:
    result = linetap(workdir, "demo", *args)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    assert re.search(rf"Invalid value for '?{option}'?", _flat(result.stderr)), result.stderr


# --- the verdict and the view, without running a line --------------------------------------------


def _records(stream: str, n: int, *, tamper: int | None = None) -> list[tuple[str, bytes]]:
    """`n` chained envelopes of one stream, as the MES stand-in keeps them; `tamper` alters one body."""
    import orjson

    out, prev = [], GENESIS
    for seq in range(1, n + 1):
        rec_id, body = f"demo-agent/{stream}/{seq}", {"kind": "unit" if stream == "units" else "device_state"}
        digest = record_hash(prev, id=rec_id, stream=stream, seq=seq, recorded_at=seq, body=body)
        shown = {**body, "verdict": "pass"} if seq == tamper else body
        out.append((f"msg {seq}", orjson.dumps({"schema": "x", "id": rec_id, "agent": "demo-agent", "stream": stream,
                                                "seq": seq, "recorded_at": seq, "prev_hash": prev, "hash": digest,
                                                "body": shown})))
        prev = digest
    return out


def _result(samples: int, records: list[tuple[str, bytes]]) -> DemoResult:
    return DemoResult(elapsed=12.0, samples=samples, chains=verify_lines(records), buffer_path=Path("b.duckdb"))


def test_result_ok_only_when_everything_arrived_and_verified() -> None:
    good = _result(100, _records("units", 3) + _records("events", 2))
    assert good.ok and (good.units, good.events) == (3, 2)
    assert "hash chains: verified" in good.summary()

    no_units = _result(100, _records("events", 2))
    assert not no_units.ok
    assert "FAILED: no unit records reached the MES" in no_units.summary()

    nothing = _result(0, [])
    assert nothing.missing() == ["telemetry", "unit records", "events"]

    tampered = _result(100, _records("units", 3, tamper=2) + _records("events", 2))
    assert not tampered.ok
    assert "the hash chains did not verify" in tampered.summary()
    assert "broken_chain" in tampered.summary()


def _frame(second: int) -> Frame:
    return Frame(elapsed=float(second), buffered=1000 * second, samples=990 * second, messages=10 * second,
                 units=second // 2, events=1)


def test_not_a_terminal_prints_one_plain_line_per_frame() -> None:
    out = io.StringIO()  # not a tty
    display = make_display(out, ["linetap demo", "  header"])
    assert isinstance(display, LineDisplay)
    for second in range(1, 6):
        display.show(_frame(second))
    display.close()
    lines = out.getvalue().splitlines()
    assert lines[:2] == ["linetap demo", "  header"]  # the header once, not per frame
    assert len(lines) == 2 + 5
    assert lines[-1].startswith("[   5s] MES received 4,950 samples")
    assert "\x1b" not in out.getvalue()


def test_terminal_redraws_in_place() -> None:
    out = io.StringIO()
    display = LiveDisplay(Console(file=out, force_terminal=True, width=120), ["linetap demo"])
    display.show(_frame(1))
    display.show(_frame(2))
    display.close()
    text = out.getvalue()
    assert "\x1b[1A" in text  # cursor up over the previous frame ...
    assert "\x1b[2J" not in text  # ... instead of clearing the screen
    assert "   990 samples" in text and "1,980 samples" in text  # both frames, the second drawn over the first


async def test_an_agent_failure_is_one_line_with_the_details_kept(tmp_path: Path) -> None:
    import asyncio

    from linetap.agent.cli.demo import DemoError, _run_agent

    class BrokenAgent:
        async def run(self, stop: asyncio.Event) -> None:
            raise RuntimeError("buffer on fire")

    async def refresh() -> None:
        await asyncio.sleep(0)

    with pytest.raises(DemoError, match="the agent stopped on an error: RuntimeError: buffer on fire") as err:
        await _run_agent(BrokenAgent(), asyncio.Event(), 5.0, refresh, tmp_path)
    assert str(tmp_path / "demo-error.txt") in str(err.value)
    assert "Traceback" in (tmp_path / "demo-error.txt").read_text()  # in the file, not on the terminal
