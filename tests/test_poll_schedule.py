"""The polling schedule every polling driver shares (drivers/base.py): fixed rate; a late slot is
polled at once, only slots that passed entirely are skipped."""

from __future__ import annotations

import asyncio
import time

from linetap.drivers.base import PollingDriver
from linetap.drivers.samples import SampleBatch


class SlowDevice(PollingDriver):
    """Reads that take `read_s` each (a device or a loop that is just too slow for the interval)."""

    def __init__(self, interval: float, read_s: float) -> None:
        super().__init__("press-7", interval)
        self.read_s = read_s
        self.starts: list[float] = []

    @property
    def tag_names(self) -> list[str]:
        return ["t"]

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    async def read(self) -> SampleBatch:
        self.starts.append(time.monotonic())
        await asyncio.sleep(self.read_s)
        return SampleBatch.all_bad(self.name, ["t"], "test")


async def polls_in(driver: SlowDevice, seconds: float) -> list[float]:
    async def run() -> None:
        async for _ in driver.samples():
            pass

    task = asyncio.create_task(run())
    await asyncio.sleep(seconds)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return driver.starts


async def test_reads_just_over_the_interval_keep_nearly_the_full_rate() -> None:
    starts = await polls_in(SlowDevice(interval=0.05, read_s=0.055), 1.2)
    # at once after each late read: ~1.2 / 0.055 = 21 polls; skipping every late slot gave 12
    assert len(starts) >= 17, len(starts)


async def test_reads_in_time_keep_the_fixed_rate_without_drift() -> None:
    starts = await polls_in(SlowDevice(interval=0.05, read_s=0.01), 1.0)
    assert 17 <= len(starts) <= 22, len(starts)
    assert abs((starts[-1] - starts[0]) - 0.05 * (len(starts) - 1)) < 0.05, "the schedule drifted"


async def test_slots_that_pass_entirely_are_skipped_not_made_up() -> None:
    starts = await polls_in(SlowDevice(interval=0.02, read_s=0.11), 1.0)
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    # a read of 110 ms spans five 20 ms slots: the next read starts at once, never five in a burst
    assert len(starts) <= 11 and min(gaps) > 0.1, (len(starts), min(gaps))
