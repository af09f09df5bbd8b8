"""linetap.agent.logs: structlog + stdlib logging through one handler, console or JSON lines."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from linetap.agent.logs import LIBRARY_LOGGERS, configure_logging, get_logger


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in LIBRARY_LOGGERS}
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    for name, lvl in levels.items():
        logging.getLogger(name).setLevel(lvl)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def records(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_lines_with_context() -> None:
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    log = get_logger("linetap.test", line="line3")
    log.info("device connected", device="sealer-1", port=502)
    (rec,) = records(out)
    assert rec["event"] == "device connected"
    assert rec["level"] == "info"
    assert rec["logger"] == "linetap.test"
    assert rec["line"] == "line3" and rec["device"] == "sealer-1" and rec["port"] == 502
    assert rec["timestamp"].endswith("Z") and "T" in rec["timestamp"]  # ISO 8601, UTC


def test_level_filters() -> None:
    out = io.StringIO()
    configure_logging("json", "warning", stream=out)
    log = get_logger("linetap.test")
    log.info("hidden")
    log.warning("shown")
    assert [r["event"] for r in records(out)] == ["shown"]


def test_contextvars_are_merged() -> None:
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    structlog.contextvars.bind_contextvars(device="press-2")
    get_logger("linetap.test").info("poll")
    assert records(out)[0]["device"] == "press-2"


def test_stdlib_logging_goes_through_and_libraries_held_at_warning() -> None:
    out = io.StringIO()
    configure_logging("json", "debug", stream=out)
    logging.getLogger("pymodbus.client").info("chatty %s", "frame")
    logging.getLogger("asyncua.client").debug("chatty")
    logging.getLogger("paho.mqtt.client").warning("connection lost: %s", "timeout")
    logging.getLogger("linetap.runtime").debug("agent debug %d", 7)
    recs = records(out)
    assert [(r["logger"], r["event"], r["level"]) for r in recs] == [
        ("paho.mqtt.client", "connection lost: timeout", "warning"),
        ("linetap.runtime", "agent debug 7", "debug"),
    ]
    assert all("timestamp" in r for r in recs)


def test_exceptions_as_structured_json_without_locals() -> None:
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    secret = "hunter2"  # noqa: F841 - a local that must not be logged
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        get_logger("linetap.test").exception("failed")
    (rec,) = records(out)
    assert rec["level"] == "error"
    assert rec["exception"][0]["exc_type"] == "RuntimeError"
    assert "hunter2" not in out.getvalue()


def test_auto_is_json_when_not_a_tty() -> None:
    out = io.StringIO()
    configure_logging("auto", stream=out)
    get_logger("x").info("hello", a=1)
    assert records(out)[0]["a"] == 1


def test_auto_is_console_on_a_tty() -> None:
    out = FakeTTY()
    configure_logging("auto", stream=out)
    get_logger("linetap.x").info("hello", device="sealer-1")
    text = out.getvalue()
    assert not text.lstrip().startswith("{")
    assert "hello" in text and "device" in text and "sealer-1" in text and "info" in text


def test_console_without_tty_has_no_colour_codes() -> None:
    out = io.StringIO()
    configure_logging("console", stream=out)
    get_logger("linetap.x").warning("careful", reason="x")
    text = out.getvalue()
    assert "\x1b[" not in text
    assert "careful" in text and "reason=x" in text and "linetap.x" in text


def test_idempotent_and_reconfigurable() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("json", "info", stream=first)
    log = get_logger("linetap.test")  # made before the second call: still follows it
    configure_logging("json", "info", stream=second)
    configure_logging("json", "info", stream=second)
    log.info("once")
    logging.getLogger("pymodbus").warning("lib")
    assert first.getvalue() == ""
    assert [r["event"] for r in records(second)] == ["once", "lib"]
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_linetap_handler", False)]
    assert len(ours) == 1


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="log level"):
        configure_logging("json", "loud", stream=io.StringIO())
    with pytest.raises(ValueError, match="log format"):
        configure_logging("xml", "info", stream=io.StringIO())  # type: ignore[arg-type]


def test_accepts_the_config_values() -> None:
    """Every format and level the config allows is accepted and does what it says; the default
    (`auto`, `info`) gives JSON lines on a non-terminal and drops debug."""
    import typing

    from linetap.config.models import LoggingConfig

    formats = typing.get_args(LoggingConfig.model_fields["format"].annotation)
    levels = typing.get_args(LoggingConfig.model_fields["level"].annotation)
    assert set(formats) == {"auto", "console", "json"} and set(levels) == {"debug", "info", "warning", "error"}
    order = ["debug", "info", "warning", "error"]
    for fmt in formats:
        for level in levels:
            stream = io.StringIO()
            configure_logging(fmt, level, stream=stream)
            log = get_logger("linetap.test")
            for name in order:
                getattr(log, name)(f"at {name}", level_name=name)
            text = stream.getvalue()
            expected = order[order.index(level):]
            for name in order:
                assert (f"at {name}" in text) == (name in expected), (fmt, level, name, text)
            if fmt == "console":
                with pytest.raises(json.JSONDecodeError):
                    json.loads(text.splitlines()[0])
            else:  # json, and auto on a stream that is not a terminal
                assert [r["event"] for r in records(stream)] == [f"at {n}" for n in expected], (fmt, level)

    cfg = LoggingConfig()
    stream = io.StringIO()
    configure_logging(cfg.format, cfg.level, stream=stream)
    log = get_logger("linetap.test")
    log.debug("hidden")
    log.info("shown", line="line 1")
    assert [(r["event"], r["level"], r["line"]) for r in records(stream)] == [("shown", "info", "line 1")]
    tty = FakeTTY()
    configure_logging(cfg.format, cfg.level, stream=tty)
    get_logger("linetap.test").info("for humans")
    assert "for humans" in tty.getvalue() and not tty.getvalue().lstrip().startswith("{")
