"""`linetap archive`: the sink's records before a date as Parquet + manifest (the 10-year copy)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import typer

from .common import EXIT_RUNTIME, app
from .sink import _db_errors, _db_failed, _open


def _parse_before(value: str) -> datetime:
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date: give e.g. 2026-01-01 or 2026-01-01T06:00+01:00",
                                 param_hint="--before") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def archive(
    db: str = typer.Option(..., help="the sink's database (postgresql://… or a DuckDB file)"),
    before: str = typer.Option(..., help="archive what was recorded before this date (UTC unless it says)"),
    out: Path = typer.Option(..., help="an empty or new folder for the Parquet files and manifest.json"),
) -> None:
    """Unit records, events and telemetry recorded before --before, as Parquet files per stream and month
    and a manifest.json (rows, seq ranges, first/last hash per agent and stream, SHA-256 of each file).
    Deletes nothing. Check a copy with `linetap verify DIR`."""
    from linetap.agent.sink.archive import ArchiveError
    from linetap.agent.sink.archive import archive as do_archive

    when = _parse_before(before)
    target = _open(db, "archive", read_only=True)
    try:
        manifest = do_archive(target, when, out, target.where)
    except ArchiveError as err:
        typer.echo(f"linetap archive: {err}", err=True)
        raise typer.Exit(EXIT_RUNTIME) from None
    except _db_errors() as err:
        raise _db_failed("archive", target, err) from None
    finally:
        target.close()
    if not manifest["files"]:
        typer.echo(f"linetap archive: nothing recorded before {when:%Y-%m-%d %H:%M} UTC in {target.where}; "
                   f"{out / 'manifest.json'} lists no files")
    for f in manifest["files"]:
        typer.echo(f"{f['file']}: {f['rows']} rows, {len(f['agents'])} agent(s)")
    typer.echo(f"linetap archive: {len(manifest['files'])} file(s) and manifest.json in {out}")


app.command()(archive)
