"""`linetap sink`, `linetap audit`, `linetap trace`: the MES-side commands (the MES side)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sys
import threading
from pathlib import Path

import typer

from linetap.config.secrets import FileProblem, read_secret_file

from .common import app

EXIT_PROBLEM = 1  # audit: incomplete or not intact; trace: serial not found
EXIT_INPUT = 2
EXIT_RUNTIME = 3


def _parse_broker(value: str) -> tuple[str, int]:
    m = re.match(r"^\[?([^\[\]\s]+?)\]?:(\d+)$", value.strip())
    if not m or not 1 <= int(m.group(2)) <= 65535:
        raise typer.BadParameter(f"{value!r}: write the broker as HOST:PORT, e.g. mes-broker.plant.local:1883",
                                 param_hint="--broker")
    return m.group(1), int(m.group(2))


def _db_errors() -> tuple[type[BaseException], ...]:
    import duckdb

    errors: list[type[BaseException]] = [duckdb.Error]
    with contextlib.suppress(ImportError):
        import psycopg

        errors.append(psycopg.Error)
    return tuple(errors)


def _open(db: str, command: str, read_only: bool):
    from linetap.agent.sink.db import BadTarget, TargetError, open_target

    try:
        return open_target(db, read_only=read_only)
    except BadTarget as err:
        typer.echo(f"linetap {command}: --db: {err}", err=True)
        raise typer.Exit(EXIT_INPUT) from None
    except TargetError as err:
        typer.echo(f"linetap {command}: {err}", err=True)
        raise typer.Exit(EXIT_RUNTIME) from None


def _db_failed(command: str, target, err: BaseException):
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    typer.echo(f"linetap {command}: the database {target.where} failed: {first}", err=True)
    return typer.Exit(EXIT_RUNTIME)


def _password(username: str | None, password_file: Path | None) -> str | None:
    if password_file is not None:
        if username is None:
            raise typer.BadParameter("a password needs --username", param_hint="--password-file")
        try:
            return read_secret_file(password_file, "--password-file")  # the agent's rules: one behaviour
        except FileProblem as err:
            raise typer.BadParameter(str(err), param_hint="--password-file") from None
    if username is not None:
        return os.environ.get("LINETAP_SINK_PASSWORD")
    return None


def _from_options(broker: str | None, db: str | None, topic: str | None, share: str | None,
                  session_expiry: int | None, username: str | None, password_file: Path | None,
                  ca_file: Path | None, replay_after: float | None, replay_attempts: int | None) -> tuple[dict, str]:
    """SinkOptions fields and the --db value, from the command line alone."""
    from linetap.config.models import TOPIC_LEVEL, TLSConfig
    from linetap.config.sink import topic_filter_problem

    missing = [name for name, v in (("--broker", broker), ("--db", db)) if v is None]
    if missing:
        raise typer.BadParameter(f"give {' and '.join(missing)}, or the settings file with --config")
    host, port = _parse_broker(broker)
    topic = "#" if topic is None else topic
    if share is not None and not re.match(TOPIC_LEVEL, share):
        raise typer.BadParameter("a group name without /, +, # or spaces", param_hint="--share")
    if (problem := topic_filter_problem(topic)) is not None:
        raise typer.BadParameter(problem, param_hint="--topic")
    password = _password(username, password_file)
    if ca_file is not None and not ca_file.is_file():
        raise typer.BadParameter(f"{ca_file} {'is a folder' if ca_file.is_dir() else 'does not exist'}",
                                 param_hint="--ca-file")
    return dict(host=host, port=port, topic=topic, share=share, username=username, password=password,
                session_expiry=7 * 86400 if session_expiry is None else session_expiry,
                tls=TLSConfig(ca_file=ca_file) if ca_file else None,
                replay_after=60.0 if replay_after is None else replay_after,
                replay_attempts=6 if replay_attempts is None else replay_attempts), str(db)


def _from_file(config: Path, given: list[str]) -> tuple[dict, str]:
    """SinkOptions fields and the db, from `--config` (exit 2 with FILE:LINE when it is wrong)."""
    from linetap.config.loader import ConfigError, load_sink_config
    from linetap.config.secrets import FileProblem as SecretProblem

    if given:
        raise typer.BadParameter(f"{', '.join(given)}: set it in {config} (with --config only --client-id "
                                 "may be given, one per sink process)", param_hint="--config")
    try:
        cfg = load_sink_config(config)
        password = cfg.mqtt.password_value()
    except ConfigError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(EXIT_INPUT) from None
    except SecretProblem as err:
        typer.echo(f"{config}: mqtt: {err}", err=True)
        raise typer.Exit(EXIT_INPUT) from None
    m = cfg.mqtt
    return dict(host=m.host, port=m.port, topic=cfg.topic, share=cfg.share, username=m.username,
                password=password, session_expiry=int(m.session_expiry), tls=m.tls, client_id=m.client_id,
                replay_after=float(cfg.replay_after), replay_attempts=cfg.replay_attempts), cfg.db


def sink(
    config: Path | None = typer.Option(None, "--config", help="the sink's settings file (YAML: mqtt, db, topic, "
                                                              "share), instead of the options below"),
    broker: str | None = typer.Option(None, help="MQTT broker HOST:PORT (MQTT 5)"),
    db: str | None = typer.Option(None, help="postgresql://USER@HOST:PORT/DB, or a DuckDB file (created if missing)"),
    topic: str | None = typer.Option(None, help="topic filter (default #); payloads are recognised by their "
                                                "linetap schema"),
    share: str | None = typer.Option(None, help="shared subscription group: subscribes $share/GROUP/FILTER"),
    client_id: str | None = typer.Option(None, help="MQTT client id, stable across restarts "
                                                     "(default: linetap-sink-<hostname>); one per sink process"),
    session_expiry: int | None = typer.Option(None, min=0, help="seconds the broker keeps the session (and "
                                                                   "queues for it) while the sink is down (7 days)"),
    username: str | None = typer.Option(None, help="MQTT user name; the password from $LINETAP_SINK_PASSWORD "
                                                    "or --password-file"),
    password_file: Path | None = typer.Option(None, help="file whose first line is the MQTT password"),
    ca_file: Path | None = typer.Option(None, help="CA certificate (PEM) of the broker: connect with TLS"),
    replay_after: float | None = typer.Option(None, min=0, help="seconds a hole no gap event covers stays open "
                                                               "before the agent is asked to re-send it (60; "
                                                               "0: never ask)"),
    replay_attempts: int | None = typer.Option(None, min=1, help="requests for one range, with doubling waits, "
                                                               "before it is recorded as unrecovered (6)"),
) -> None:
    """Store every linetap record from the broker in a database, once each; PUBACK only after the commit."""
    from linetap.agent.logs import configure_logging, get_logger
    from linetap.agent.sink.consumer import SinkError, SinkOptions, run_sink

    if config is not None:
        given = [opt for opt, v in (("--broker", broker), ("--db", db), ("--topic", topic), ("--share", share),
                                    ("--session-expiry", session_expiry), ("--username", username),
                                    ("--password-file", password_file), ("--ca-file", ca_file),
                                    ("--replay-after", replay_after), ("--replay-attempts", replay_attempts))
                 if v is not None]
        fields, db = _from_file(config, given)
    else:
        fields, db = _from_options(broker, db, topic, share, session_expiry, username, password_file, ca_file,
                                   replay_after, replay_attempts)
    in_file = fields.pop("client_id", None)
    client_id = client_id or in_file or f"linetap-sink-{socket.gethostname()}"
    configure_logging("auto", "info")
    log = get_logger("linetap.agent.sink")
    opts = SinkOptions(**fields, client_id=client_id)
    target = _open(db, "sink", read_only=False)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        try:
            applied = target.migrate()
        except _db_errors() as err:
            raise _db_failed("sink", target, err) from None
        if applied:
            log.info("sink database schema created or upgraded", db=target.where, migrations=applied)
        try:
            run_sink(opts, target, stop)
        except SinkError as err:
            typer.echo(f"linetap sink: {err}", err=True)
            raise typer.Exit(EXIT_RUNTIME) from None
        except _db_errors() as err:
            raise _db_failed("sink", target, err) from None
    finally:
        target.close()


def audit(
    db: str = typer.Option(..., help="the sink's database (postgresql://… or a DuckDB file)"),
    json_out: bool = typer.Option(False, "--json", help="JSON for monitoring"),
) -> None:
    """Per agent and stream: seqs held, missing (and covered by gap events), chain breaks, differing
    duplicates. Exit 0 only when complete and intact, 1 otherwise."""
    from linetap.agent.sink.audit import as_json, render
    from linetap.agent.sink.audit import audit as do_audit

    target = _open(db, "audit", read_only=True)
    try:
        result = do_audit(target)
    except _db_errors() as err:
        raise _db_failed("audit", target, err) from None
    finally:
        target.close()
    typer.echo(as_json(result, target.where) if json_out else render(result, target.where))
    ok = bool(result) and all(sa.ok for sa in result)
    raise typer.Exit(0 if ok else EXIT_PROBLEM)


def trace(
    serial: str = typer.Argument(..., help="the unit's serial number"),
    db: str = typer.Option(..., help="the sink's database (postgresql://… or a DuckDB file)"),
    format: str = typer.Option("text", "--format", help="text, json, or html (a printable eDHR page, one file)"),
) -> None:
    """Every unit record and non-conformance of one serial, in time order, with its chain checked."""
    import orjson

    from linetap.agent.sink.trace import render_text
    from linetap.agent.sink.trace import trace as do_trace

    if format not in ("text", "json", "html"):
        raise typer.BadParameter("expected text, json or html", param_hint="--format")
    target = _open(db, "trace", read_only=True)
    try:
        result = do_trace(target, serial)
    except _db_errors() as err:
        raise _db_failed("trace", target, err) from None
    finally:
        target.close()
    if not result["units"] and not result["events"]:
        typer.echo(f"linetap trace: no unit record or event of serial {serial!r} in {target.where}", err=True)
        raise typer.Exit(EXIT_PROBLEM)
    if format == "json":
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif format == "html":
        from linetap.agent.sink.trace_html import render_html

        sys.stdout.write(render_html(result, target.where))
    else:
        typer.echo(render_text(result))


app.command()(sink)
app.command()(audit)
app.command()(trace)
