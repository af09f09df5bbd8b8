"""A private PostgreSQL for the sink tests: `initdb` + `pg_ctl` on a free port in a temp dir.

Uses the binaries in /usr/lib/postgresql/*/bin (Debian's `postgresql` package) or on PATH. As
root, the server runs as `nobody` (PostgreSQL refuses to run as root). Never the server a
machine may run on 5432. Without the binaries the PostgreSQL tests are skipped with the
reason; `LINETAP_REQUIRE_POSTGRES=1` makes that a failure.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from linetap.simulators.net import free_port

__all__ = ["PostgresServer", "find_pg_bin", "postgres_server"]


def find_pg_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


def _require() -> bool:
    return os.environ.get("LINETAP_REQUIRE_POSTGRES", "") not in ("", "0", "false", "no")


class PostgresServer:
    user = "linetap"

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="linetap-pg-", dir="/tmp"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.as_user = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.dir, "nobody")
            os.chmod(self.dir, 0o755)

    def _run(self, *args: str, timeout: float = 60) -> None:
        r = subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=timeout, cwd=self.dir)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")

    def start(self) -> None:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user, "--auth=trust",
                  "-E", "UTF8", "--no-sync")
        self.resume()

    def resume(self) -> None:
        """Start the server (again) on its port."""
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.dir / "pg.log"),
                  "-w", "-t", "60", "start", timeout=90)

    def pause(self) -> None:
        """Stop the server (fast: connections are cut), keeping its data."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def stop(self) -> None:
        try:
            self.pause()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:10]}"
        deadline = time.monotonic() + 10
        while True:
            try:
                with psycopg.connect(self.url(), autocommit=True) as conn:
                    conn.execute(f"CREATE DATABASE {name}")
                return self.url(name)
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


@pytest.fixture(scope="session")
def postgres_server():
    bindir = find_pg_bin()
    if bindir is None:
        if _require():
            pytest.fail("LINETAP_REQUIRE_POSTGRES=1 but no PostgreSQL binaries (initdb, pg_ctl) found: "
                        "apt-get install postgresql")
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin or on PATH: "
                    "apt-get install postgresql to run the PostgreSQL sink tests")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        if _require():
            pytest.fail("LINETAP_REQUIRE_POSTGRES=1 but psycopg is not installed: pip install 'linetap[postgres]'")
        pytest.skip("psycopg not installed: pip install 'linetap[postgres]'")
    server = PostgresServer(bindir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
