"""What every protocol server of the station shares: the model clock and the life cycle."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Self

from .station import StationModel


class ServedStation:
    """Base of the Modbus and OPC UA station servers. Subclasses implement `start()` and `stop()`
    and call `_start_clock()` when they first start serving."""

    def __init__(self, model: StationModel, clock: Callable[[], float] | None, speed: float) -> None:
        self.model = model
        self._clock = clock
        self._speed = speed
        self._t0: float | None = None

    def _start_clock(self) -> None:
        if self._t0 is None:
            self._t0 = time.monotonic()

    def model_time(self) -> float:
        """Model seconds now: the test's clock, else `speed` x seconds since the first start."""
        if self._clock is not None:
            return self._clock()
        if self._t0 is None:
            return 0.0
        return (time.monotonic() - self._t0) * self._speed

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def restart(self, down_for: float = 0.0) -> None:
        """Stop, stay down for `down_for` seconds, start again on the same port."""
        await self.stop()
        if down_for:
            await asyncio.sleep(down_for)
        await self.start()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
