"""A private PostgreSQL for the benchmarks: `initdb` + `pg_ctl` on a free 127.0.0.1 port in a temp dir.

The same recipe as `tests/fixtures_postgres.py` (which the benchmarks do not import: it needs
pytest): the binaries in /usr/lib/postgresql/*/bin (Debian's `postgresql` package) or on PATH;
as root the server runs as `nobody` (PostgreSQL refuses root); never a server on 5432. `fsync=off`
as in the tests: the benchmark measures the sink's work, not this VM's disk flushes (say so in
the figures). Or `--pg URL`: a server the caller provides.
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

from linetap.simulators.net import free_port

__all__ = ["PostgresServer", "create_database", "find_pg_bin", "postgres_pids"]


def find_pg_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


class PostgresServer:
    user = "linetap"

    def __init__(self, bindir: Path, parent: Path | None = None) -> None:
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="linetap-bench-pg-", dir=str(parent) if parent else "/tmp"))
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

    def start(self) -> PostgresServer:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user, "--auth=trust",
                  "-E", "UTF8", "--no-sync")
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c shared_buffers=256MB -c max_wal_size=4GB -c checkpoint_timeout=30min")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.dir / "pg.log"),
                  "-w", "-t", "60", "start", timeout=90)
        return self

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{db}"

    @property
    def pid(self) -> int:
        """The postmaster."""
        return int((self.data / "postmaster.pid").read_text().split()[0])


def create_database(admin_url: str, prefix: str = "bench") -> str:
    """A fresh, empty database on the server of `admin_url`; its URL."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + 10
    while True:
        try:
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {name}")
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{name}"


def postgres_pids(postmaster: int) -> list[int]:
    """The postmaster and its children (backends, writers) as they are now: their CPU is the server's."""
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster:
            pids.append(int(entry.name))
    return pids
