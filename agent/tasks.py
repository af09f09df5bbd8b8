"""Task helpers shared by the agent's parts."""

from __future__ import annotations

import asyncio

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(tasks: list[asyncio.Task]) -> None:
    """Cancel and wait, cancelling again while any is left: on Python 3.11 a library's
    `asyncio.wait_for` can swallow a cancellation that lands together with its result."""
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.2)
