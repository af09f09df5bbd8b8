"""Logging: structlog with key=value context, readable on a terminal, JSON lines otherwise.

    configure_logging("auto", "info")          # once, at start-up (calling again reconfigures)
    log = get_logger(__name__)
    log.info("device connected", device="sealer-1", host="10.0.0.5")

Every line has an ISO-8601 UTC `timestamp`, `level`, `logger` and `event`, plus the bound context
(`log.bind(device=...)`, or `structlog.contextvars.bind_contextvars(...)` for a whole task).
The standard library's logging (pymodbus, asyncua, paho, amqtt...) goes through the same renderer
and handler; those libraries are held at WARNING so their chatter does not drown the agent's log.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal, TextIO

import structlog

__all__ = ["LIBRARY_LOGGERS", "configure_logging", "get_logger"]

LogFormat = Literal["auto", "console", "json"]

# Third-party loggers held at WARNING (or above, when the agent's level is higher).
LIBRARY_LOGGERS = ("pymodbus", "asyncua", "paho", "amqtt", "transitions", "passlib", "websockets",
                   "asyncio")

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "warn": logging.WARNING, "error": logging.ERROR, "critical": logging.CRITICAL}

_HANDLER_MARK = "_linetap_handler"


def _shared_processors() -> list[Any]:
    """Run for both structlog and stdlib records, before rendering."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.UnicodeDecoder(),
    ]


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    try:
        return _LEVELS[level.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}: use debug, info, warning or error") from None


def configure_logging(format: LogFormat = "auto", level: str | int = "info",  # noqa: A002 - the config's name
                      stream: TextIO | None = None) -> None:
    """Send structlog and stdlib logging to `stream` (default: sys.stderr at call time).

    `auto` renders for humans when the stream is a terminal and as JSON lines otherwise (files,
    journald, containers). Idempotent: a second call replaces the first one's handler."""
    stream = sys.stderr if stream is None else stream
    if format == "auto":
        format = "console" if _is_tty(stream) else "json"  # noqa: A001
    if format not in ("console", "json"):
        raise ValueError(f"unknown log format {format!r}: use auto, console or json")
    numeric = _level(level)

    renderer: Any
    if format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=_is_tty(stream))
        render_chain = [renderer]
    else:
        renderer = structlog.processors.JSONRenderer(default=str)
        # Structured tracebacks without local variables: locals can hold secrets, and are huge.
        tracebacks = structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False))
        render_chain = [tracebacks, renderer]

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        context_class=dict,
        # Not cached: a logger made before configure_logging (e.g. at import) still follows it.
        cache_logger_on_first_use=False,
    )

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_shared_processors(), structlog.stdlib.PositionalArgumentsFormatter()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render_chain],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))


def get_logger(name: str | None = None, **context: Any) -> structlog.stdlib.BoundLogger:
    """A structlog logger named `name` (e.g. `linetap.agent.forwarder`), with bound context."""
    logger = structlog.stdlib.get_logger(name)
    return logger.bind(**context) if context else logger
