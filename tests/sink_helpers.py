"""Helpers for the sink tests: the installed `linetap sink` as a subprocess, and database access."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

LINETAP = str(Path(sys.executable).with_name("linetap"))


def linetap(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    r = subprocess.run([LINETAP, *args], capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in r.stdout + r.stderr, f"linetap {' '.join(args)} printed a traceback:\n{r.stderr}"
    return r


class SinkProc:
    """`linetap sink --broker … --db …` in a subprocess, its log in a file; started when subscribed."""

    def __init__(self, broker, db: str | None, log: Path, *extra: str, client_id: str = "test-sink") -> None:
        """`broker` None: `extra` says where (e.g. `--config FILE`)."""
        self.log = log
        start = log.stat().st_size if log.exists() else 0
        self.fh = open(log, "ab")  # noqa: SIM115 (the child keeps it)
        where = [] if broker is None else ["--broker", f"{broker.host}:{broker.port}", "--db", db]
        self.proc = subprocess.Popen([LINETAP, "sink", *where, "--client-id", client_id, *extra],
                                     stdout=self.fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while b"sink subscribed" not in self._since(start):
            assert self.proc.poll() is None, f"linetap sink exited {self.proc.returncode}:\n{self.text()[-3000:]}"
            assert time.monotonic() < deadline, f"linetap sink did not subscribe within 30 s:\n{self.text()[-3000:]}"
            time.sleep(0.05)

    def _since(self, offset: int) -> bytes:
        return self.log.read_bytes()[offset:]

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self.fh.close()

    def stop(self) -> None:
        """SIGTERM: the sink commits and acknowledges what it holds, exits 0, no traceback."""
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(30)
        self.fh.close()
        assert rc == 0, f"linetap sink exited {rc} on SIGTERM:\n{self.text()[-3000:]}"
        assert "Traceback" not in self.text(), self.text()[-3000:]


def query(db: str, sql: str, params: tuple = ()) -> list[tuple]:
    """Run one statement on the sink's database (DuckDB: only while no sink holds the file), committed."""
    from linetap.agent.sink.db import open_target

    t = open_target(db)
    try:
        with t.transaction():
            return t.execute(sql, params)
    finally:
        t.close()


def tls_broker_with_password(pki: dict, tmp_path: Path, user: str = "mes-sink", password: str = "s3cret"):
    """A Mosquitto (not started) on TLS that wants `user`/`password`; the test skips without mosquitto."""
    import pytest
    from fixtures_broker import Broker

    pwfile = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pwfile), user, password], check=True, capture_output=True)
    pwfile.chmod(0o644)
    b = Broker(tmp_path / "broker", allow_anonymous=False, listener_conf=(
        f"cafile {pki['ca.pem']}\ncertfile {pki['server.pem']}\nkeyfile {pki['server.key']}\n"
        f"password_file {pwfile}"))
    if b.kind != "mosquitto":
        pytest.skip("needs mosquitto (password file)")
    return b
