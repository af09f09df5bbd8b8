"""A pty pair joined by socat: a serial line for Modbus RTU tests without hardware.

`pty_pair` yields (simulator end, driver end). Without socat the tests are skipped with the reason,
unless LINETAP_REQUIRE_SOCAT=1 (CI installs socat and insists).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

__all__ = ["pty_pair"]


@pytest.fixture
def pty_pair(tmp_path):
    socat = shutil.which("socat")
    if socat is None:
        if os.environ.get("LINETAP_REQUIRE_SOCAT") == "1":
            pytest.fail("socat is not installed and LINETAP_REQUIRE_SOCAT=1: apt-get install socat")
        pytest.skip("socat is not installed (apt-get install socat): no pty pair for the Modbus RTU tests")
    a, b = tmp_path / "sim.tty", tmp_path / "agent.tty"
    proc = subprocess.Popen([socat, "-d", "-d", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not (a.exists() and b.exists()):
            if proc.poll() is not None:
                pytest.fail(f"socat exited: {proc.stderr.read().decode(errors='replace')}")
            if time.monotonic() > deadline:
                pytest.fail("socat made no pty pair within 10 s")
            time.sleep(0.02)
        yield str(a), str(b)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()
