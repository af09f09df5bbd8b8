"""Capped exponential backoff with jitter: the one retry policy of the agent.

The one clock seam: every wait between two retries of the agent (device loops, forwarder)
is `await Backoff.wait()`, which calls the module-level `sleep` (asyncio.sleep). A test that
needs days of outage replaces `linetap.agent.backoff.sleep` (monkeypatch) with a fake that
advances a fake clock; a single Backoff can also take `sleep=` directly.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

sleep: Callable[[float], Awaitable[object]] = asyncio.sleep


class Backoff:
    """Delays min, 2*min, 4*min ... up to max, each spread by +-jitter so that many agents
    (or devices) that lost the same switch do not retry in lock-step.

    The current delay is kept and multiplied, never recomputed as `factor ** attempt`: an
    outage of any length (a million retries and more) never overflows."""

    def __init__(self, minimum: float, maximum: float, *, factor: float = 2.0, jitter: float = 0.2,
                 rng: random.Random | None = None, sleep: Callable[[float], Awaitable[object]] | None = None) -> None:
        self.minimum = minimum
        self.maximum = max(minimum, maximum)
        self.factor = max(1.0, factor)
        self.jitter = jitter
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._base = self.minimum

    def next(self) -> float:
        base = self._base
        if base < self.maximum:
            self._base = min(self.maximum, base * self.factor)
        return min(self.maximum, base * (1 + self._rng.uniform(-self.jitter, self.jitter)))

    async def wait(self, delay: float | None = None) -> float:
        """Sleep `delay` (default: the next one) through the clock seam; return it."""
        if delay is None:
            delay = self.next()
        await (self._sleep or sleep)(delay)
        return delay

    def reset(self) -> None:
        self._base = self.minimum
