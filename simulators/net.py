"""Local TCP ports for the simulators, brokers and agents that tests, benchmarks and the demo start.

`free_port()` binds port 0 and closes the socket again: the port is free now, not reserved, so
another process may take it before the caller binds it (good enough on a test machine).
"""

from __future__ import annotations

import socket
import time

LOCALHOST = "127.0.0.1"


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port on `host` that nothing listens on at the moment."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def accepts(host: str, port: int, timeout: float = 0.2) -> bool:
    """Whether something accepts TCP connections on host:port right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(port: int, timeout: float = 10.0, host: str = LOCALHOST) -> None:
    """Until something accepts connections on host:port; TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not accepts(host, port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")
        time.sleep(0.02)
