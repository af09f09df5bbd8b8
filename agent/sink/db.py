"""The sink's database: a DuckDB file (embedded default) or PostgreSQL (`postgresql://…`, psycopg 3).

One schema for both, created by the versioned SQL files in `migrations/` (`NNNN_name.sql`,
applied in order, each once, recorded in `sink_migrations`). SQL is written with `?`
placeholders; `Target.sql` turns them into `%s` for psycopg.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["BadTarget", "Target", "TargetError", "from_us", "open_target", "to_us"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MIGRATION_LOCK = 0x6C696E65  # pg_advisory_xact_lock key: two sinks starting at once migrate one after the other


class BadTarget(ValueError):
    """The --db value is wrong (exit 2): the message says what to give instead."""


class TargetError(RuntimeError):
    """The database cannot be opened or used (exit 3): unreachable, locked, refused."""


def from_us(us: int | None) -> datetime | None:
    return None if us is None else EPOCH + timedelta(microseconds=int(us))


def to_us(dt: datetime | None) -> int | None:
    return None if dt is None else (dt - EPOCH) // timedelta(microseconds=1)


def _redact(url: str) -> str:
    return re.sub(r"(//[^:/@]+):[^@/]*@", r"\1:***@", url)


@dataclass
class Target:
    dialect: str  # "duckdb" | "postgresql"
    where: str  # for messages: the file, or the URL without its password
    conn: Any
    spec: str = ""  # what it was opened from (PostgreSQL: to reconnect)

    # --- statements ------------------------------------------------------------------------

    def sql(self, text: str) -> str:
        return text.replace("?", "%s") if self.dialect == "postgresql" else text

    def execute(self, text: str, params: tuple | list = ()) -> list[tuple]:
        cur = self.conn.execute(self.sql(text), params)
        try:
            return cur.fetchall()
        except Exception:  # a statement without a result set (psycopg: ProgrammingError)
            return []

    def executemany(self, text: str, rows: list[tuple]) -> None:
        if not rows:
            return
        if self.dialect == "postgresql":
            with self.conn.cursor() as cur:
                cur.executemany(self.sql(text), rows)
        else:
            self.conn.executemany(text, rows)

    @contextlib.contextmanager
    def transaction(self):
        if self.dialect == "duckdb":
            self.conn.execute("BEGIN TRANSACTION")
            try:
                yield self
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
        else:
            try:
                yield self
            except BaseException:
                self.conn.rollback()
                raise
            self.conn.commit()

    def lost(self, err: BaseException) -> bool:
        """Is `err` the PostgreSQL server gone (restart, network), so that reconnecting may help?"""
        if self.dialect != "postgresql":
            return False
        import psycopg

        return isinstance(err, psycopg.OperationalError) or bool(self.conn.closed or self.conn.broken)

    def reconnect(self) -> None:
        """PostgreSQL: a new connection (raises TargetError while the server is still away)."""
        self.close()
        self.conn = _open_postgres(self.spec, False).conn

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()

    # --- schema ----------------------------------------------------------------------------

    def migrations(self) -> list[tuple[int, str, str]]:
        """(version, name, SQL) of every migration file shipped, in order."""
        folder = resources.files("linetap.agent.sink") / "migrations"
        out = []
        for entry in folder.iterdir():
            m = re.match(r"^(\d{4})_(\w+)\.sql$", entry.name)
            if m:
                out.append((int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
        return sorted(out)

    def migrate(self) -> list[int]:
        """Apply the migrations not yet applied; return their versions."""
        applied: list[int] = []
        with self.transaction():
            if self.dialect == "postgresql":
                self.execute(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
            self.execute("CREATE TABLE IF NOT EXISTS sink_migrations (version INTEGER PRIMARY KEY, "
                         "name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL)")
            done = {r[0] for r in self.execute("SELECT version FROM sink_migrations")}
            for version, name, text in self.migrations():
                if version in done:
                    continue
                for statement in _statements(text):
                    self.execute(statement)
                self.execute("INSERT INTO sink_migrations VALUES (?, ?, ?)", (version, name, datetime.now(UTC)))
                applied.append(version)
        return applied

    def schema_version(self) -> int:
        try:
            rows = self.execute("SELECT max(version) FROM sink_migrations")
        except Exception:
            if self.dialect == "postgresql":
                self.conn.rollback()
            return 0
        return rows[0][0] or 0


def _statements(text: str) -> list[str]:
    """The statements of a migration file (no `;` inside literals in ours)."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def open_target(spec: str, *, read_only: bool = False) -> Target:
    """Open `spec`: `postgresql://…` (or `postgres://…`), else a DuckDB file path.

    `read_only` (audit, trace): the database must exist and hold the sink's schema.
    """
    if re.match(r"^postgres(ql)?://", spec):
        return _open_postgres(spec, read_only)
    if re.match(r"^[a-z][a-z0-9+.-]*://", spec, re.I):
        raise BadTarget(f"{spec!r}: unknown database URL; give postgresql://USER@HOST:PORT/DB or a DuckDB file path")
    return _open_duckdb(Path(spec), read_only)


def _open_duckdb(path: Path, read_only: bool) -> Target:
    import duckdb

    if path.is_dir():
        raise BadTarget(f"{path} is a folder: give a DuckDB file name, e.g. {path / 'mes.duckdb'}")
    if read_only and not path.exists():
        raise BadTarget(f"no such database file: {path} (give the file `linetap sink --db` writes)")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise BadTarget(f"the folder {parent} does not exist: create it or give another --db path")
    try:
        conn = duckdb.connect(str(path), read_only=read_only)
    except duckdb.IOException as err:
        text = str(err)
        if "lock" in text.lower():
            raise TargetError(f"{path} is in use by another process (a running `linetap sink`?): "
                              f"DuckDB allows one writer; stop it first, or use PostgreSQL for concurrent "
                              f"access ({text.splitlines()[0]})") from None
        raise TargetError(f"cannot open {path}: {text.splitlines()[0]}") from None
    except duckdb.Error as err:
        raise TargetError(f"cannot open {path} as a DuckDB database: {str(err).splitlines()[0]}") from None
    target = Target("duckdb", str(path), conn)
    if read_only:
        _check_schema(target)
    return target


def _open_postgres(url: str, read_only: bool) -> Target:
    try:
        import psycopg
    except ImportError:
        raise TargetError("PostgreSQL needs psycopg 3: pip install 'linetap[postgres]'") from None
    where = _redact(url)
    try:
        conn = psycopg.connect(url, connect_timeout=10)
    except psycopg.ProgrammingError as err:  # a malformed conninfo
        raise BadTarget(f"{where}: not a PostgreSQL URL ({str(err).strip()}); "
                        "give postgresql://USER@HOST:PORT/DB") from None
    except psycopg.Error as err:
        raise TargetError(f"cannot connect to PostgreSQL at {where}: {str(err).strip().splitlines()[0]} "
                          "(is the server running and the URL right?)") from None
    target = Target("postgresql", where, conn, url)
    if read_only:
        conn.read_only = True
        _check_schema(target)
    return target


def _check_schema(target: Target) -> None:
    if target.schema_version() == 0:
        target.close()
        raise BadTarget(f"{target.where} holds no linetap sink data (no sink_migrations table): "
                        "give the database `linetap sink --db` writes")
