"""systemd's notify protocol (sd_notify(3)), without libsystemd: datagrams to `$NOTIFY_SOCKET`.

`Type=notify`: the agent says `READY=1` once its buffer is open and its tasks run, `STOPPING=1`
when it begins a clean stop. `WatchdogSec=`: systemd sets `$WATCHDOG_USEC`; the agent sends
`WATCHDOG=1` every half of it from a task on its event loop, so a loop that hangs (a blocked call,
a deadlock) stops the pings and systemd restarts the service. Outside systemd (no `$NOTIFY_SOCKET`)
every call does nothing.
"""

from __future__ import annotations

import asyncio
import os
import socket

import structlog

log = structlog.get_logger("linetap.agent")

__all__ = ["Notifier"]


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET") or None
        self.address = ("\0" + path[1:]) if path and path.startswith("@") else path  # '@': abstract namespace
        self.watchdog_interval: float | None = None
        usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
        if self.address and usec and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1e6 / 2
        self._failed = False

    def send(self, *fields: str) -> None:
        if not self.address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto("\n".join(fields).encode(), self.address)
        except OSError as err:
            if not self._failed:  # loudly once: systemd will restart a service whose pings stop
                log.error("cannot notify systemd", socket=self.address.lstrip("\0"), error=str(err))
                self._failed = True
            return
        self._failed = False

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping: flushing the buffer")

    async def watchdog(self) -> None:
        """Ping for as long as the event loop runs it (a task of the agent's TaskGroup)."""
        if self.watchdog_interval is None:
            return
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_interval)
