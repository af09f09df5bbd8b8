"""The agent: device loops -> writers -> DuckDB buffer -> forwarder, owned by one TaskGroup.

Two writers: telemetry is committed at least every flush interval; events and unit records
(the unit capture runs in the device loops, as batches arrive) have their own queue, writer,
transaction, file and thread, and are handed to the forwarder from memory, so a
non-conformance never waits behind telemetry.

Shutdown order (on `stop`): device loops are cancelled first; the writers commit whatever
they produced; the forwarder gets a short grace period to deliver and stores its cursor;
then the buffer is closed. Nothing that reached a writer's queue is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import structlog

from linetap.agent.backoff import Backoff
from linetap.agent.capture import CaptureEngine, config_version
from linetap.agent.deadband import ExceptionFilter
from linetap.agent.metrics import open_metrics
from linetap.agent.reload import Reloader
from linetap.agent.sd_notify import Notifier
from linetap.agent.sidecar import sidecar_path, write_sidecar
from linetap.agent.status_file import AgentStats, DeviceStatus, status_path, write_status_file
from linetap.agent.tasks import cancel_and_wait
from linetap.buffers import AsyncBuffer, BufferCorrupt, BufferDamaged, BufferWriteFailed, keep_copies
from linetap.buffers.records import Event
from linetap.config.models import LineConfig
from linetap.drivers import DriverError, create_driver
from linetap.drivers.samples import SampleBatch, now_us

log = structlog.get_logger("linetap.agent")

SINK = "mqtt"
_FLUSH_SAMPLES = 50_000  # commit early when this many samples wait, whatever the interval
# While the buffer cannot be written (disk full, read-only folder), telemetry is held in memory up
# to buffer.hold_samples, events and unit records all; commits are retried this often (seconds).
WRITE_RETRY = 1.0


@dataclass(frozen=True, slots=True)
class _Captured:
    """What the unit capture made of one batch: finished unit records and events."""

    units: list[dict[str, Any]]
    events: list[Event]


class Agent:
    """One line's agent. `await Agent(config).run(stop)` runs until `stop` is set."""

    def __init__(self, config: LineConfig, *, status_file: Path | None = None) -> None:
        self.config = config
        self.stats = AgentStats(devices={d.name: DeviceStatus() for d in config.devices})
        self.buffer: AsyncBuffer | None = None
        self.forwarder = None
        self._queue: asyncio.Queue[SampleBatch] = asyncio.Queue(maxsize=10_000)  # telemetry
        # events and unit records: few, and a device loop must never wait for room behind telemetry
        self._records: asyncio.Queue[Event | _Captured] = asyncio.Queue()
        self._station = {d.name: d.station_name for d in config.devices}
        self.status_file = status_file or status_path(config)
        self._held: deque[SampleBatch] = deque()  # telemetry the buffer refused, oldest first
        self._held_arrow: deque[pa.Table] = deque()  # the same batches as the buffer takes them
        self._held_samples = 0
        self._next_retry = 0.0  # monotonic: no commit is tried before this while telemetry is held
        self._unwritten: list[Event | _Captured] = []  # records a failed commit at a stop left behind
        self.write_fault: BufferWriteFailed | None = None  # set while the buffer cannot be written
        self.capture = CaptureEngine(config)
        self.metrics = open_metrics(config, self, config_version(config))
        self.reloader = Reloader(self)  # SIGHUP: request(path)
        self.exceptions = ExceptionFilter(config.devices)  # report by exception: telemetry only
        self.ready = asyncio.Event()  # set once the buffer is open and tasks run

    async def run(self, stop: asyncio.Event) -> None:
        from linetap.agent.forwarder import MQTTForwarder

        use_system_arrow_pool()
        cfg = self.config
        self.buffer = await AsyncBuffer.open(cfg.buffer.path, cfg.agent.id, memory_limit=cfg.buffer.memory_limit)
        log.info("agent started", agent=cfg.agent.id, devices=len(cfg.devices), buffer=str(cfg.buffer.path),
                 broker=f"{cfg.mqtt.host}:{cfg.mqtt.port}")
        self.forwarder = MQTTForwarder(cfg, self.buffer, sink=SINK)
        self.forwarder.replays.on_unavailable = lambda data: self._put(Event("replay_unavailable", now_us(), data=data))
        damage: BufferDamaged | None = None
        self.metrics.serve()
        try:
            try:
                await self._restore_open_units()
                async with asyncio.TaskGroup() as tg:
                    self._tg, self._devices = tg, {d.name: tg.create_task(self._device_loop(d), name=f"device:{d.name}")
                                                   for d in cfg.devices}  # the reloader adds and removes
                    reloads = tg.create_task(self.reloader.run(), name="config-reload")
                    house = tg.create_task(self._housekeeping(), name="housekeeping")
                    writers = [tg.create_task(self._telemetry_writer(), name="telemetry-writer"),
                               tg.create_task(self._records_writer(), name="records-writer")]
                    forwarder = tg.create_task(self.forwarder.run(), name="forwarder")
                    replays = tg.create_task(self.forwarder.replays.run(), name="replay-requests")
                    notifier = Notifier()
                    watchdog = tg.create_task(notifier.watchdog(), name="systemd-watchdog")
                    self.ready.set()
                    notifier.ready(f"collecting: {len(cfg.devices)} devices, buffer {cfg.buffer.path}")
                    await stop.wait()
                    log.info("agent stopping")
                    notifier.stopping()
                    await cancel_and_wait([*self._devices.values(), house, replays, watchdog, reloads])
                    await self._records.join()  # the writers have committed everything produced
                    await self._queue.join()
                    for writer in writers:
                        writer.cancel()
                    await self._grace(forwarder)
                    forwarder.cancel()
            except* BufferDamaged as group:
                damage = group.exceptions[0]
        finally:
            self.metrics.close()
            await self._write_status_file()
            await self.buffer.close()
            log.info("agent stopped", agent=cfg.agent.id, samples=self.stats.samples_buffered)
        if damage is not None:
            raise self._stopped_on_damage(damage) from None

    def _stopped_on_damage(self, damage: BufferDamaged) -> BufferCorrupt:
        """Damage found while running: keep what memory holds in a sidecar file and copies of the
        files, and say what to do. (The agent never goes on writing over a damaged buffer.)"""
        path = self.config.buffer.path
        records: list[Event | dict[str, Any]] = []
        while not self._records.empty():
            self._unwritten.append(self._records.get_nowait())
        for item in self._unwritten:
            records.extend([item] if isinstance(item, Event) else [*item.events, *item.units])
        telemetry = list(self._held)
        while not self._queue.empty():
            telemetry.append(self._queue.get_nowait())
        sidecar = sidecar_path(path)
        try:
            n_records, n_samples = write_sidecar(sidecar, self.buffer.held(), records, telemetry)
        except OSError as exc:
            sidecar, n_records, n_samples = None, 0, 0
            log.error("cannot write the sidecar file", path=str(sidecar_path(path)), error=str(exc))
        copies = keep_copies(path)
        log.error("buffer damaged while running: agent stopped", path=str(path), error=str(damage),
                  sidecar=str(sidecar), records_in_sidecar=n_records, samples_in_sidecar=n_samples,
                  samples_read=self.stats.samples_read, samples_committed=self.stats.samples_buffered,
                  copies=[str(c) for c in copies])
        kept = f"; {n_records} records and {n_samples} samples held in memory are in {sidecar}" if sidecar else ""
        return BufferCorrupt(
            f"{damage}. The agent stopped{kept}; copies of the damaged files are kept as "
            f"{', '.join(map(str, copies))}. Restore the buffer from a backup, or move its files away to start a "
            "new one (unsent records in it would be lost); keep the copies and the sidecar file for the line's "
            "records.")

    async def _restore_open_units(self) -> None:
        """Units a previous agent started and never closed (killed, power cut): resolved at the first polls."""
        opened = await self.buffer.open_units()
        if not opened:
            return
        stopped = {d: await self.buffer.last_reading(d) for d in {u.get("device") for u in opened} if d}
        log.warning("units left open by the previous run", units=len(opened),
                    serials=[u.get("serial") for u in opened])
        units, events = self.capture.restore(opened, stopped, now_us())
        if units or events:
            self._put(_Captured(units, events))

    async def _grace(self, forwarder: asyncio.Task, seconds: float = 2.0) -> None:
        """Give the forwarder a moment to deliver what is committed (it resumes from the cursor anyway)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not forwarder.done():
            stats = await self.buffer.stats(SINK)
            if all(s.pending == 0 for s in stats):
                return
            await asyncio.sleep(0.05)

    # -- devices --------------------------------------------------------------------------

    async def _device_loop(self, device_cfg) -> None:
        name = device_cfg.name
        status = self.stats.devices[name]
        driver = create_driver(device_cfg)
        status.counters = driver.counters
        backoff = Backoff(self.config.reconnect.min, self.config.reconnect.max)
        ever_connected = False
        while True:
            try:
                await driver.connect()
                state = "recovered" if ever_connected else "connected"
                ever_connected = True
                backoff.reset()
                await self._set_state(device_cfg, status, "connected", state, None)
                async for batch in driver.samples():
                    status.batches += 1
                    status.samples += len(batch)
                    self.metrics.batch(name, batch, driver)
                    await self._produce(batch)
            except DriverError as exc:
                reason = str(exc)
            except Exception as exc:  # a driver bug must not stop the other devices
                log.exception("driver failed unexpectedly", device=name)
                reason = f"internal error: {exc!r}"
            finally:
                await driver.close()
            if status.state != "lost":
                log.warning("device lost", device=name, reason=reason, retry_in=f"{backoff.minimum:g}s")
                await self._set_state(device_cfg, status, "lost", "lost", reason)
                await self._produce(SampleBatch.all_bad(name, driver.tag_names, reason))
            else:
                status.reason = reason  # the status file shows why the latest retry failed
                log.debug("device still unreachable", device=name, reason=reason)
            await backoff.wait()

    async def _set_state(self, device_cfg, status: DeviceStatus, state: str, event_state: str, reason: str | None):
        status.state, status.since, status.reason = state, now_us(), reason
        if event_state != "lost":
            log.info(f"device {event_state}", device=device_cfg.name)
        self.metrics.device_state(device_cfg.name, event_state)
        data = {"state": event_state, "reason": reason} if reason else {"state": event_state}
        self._put(Event("device_state", now_us(), device_cfg.name, device_cfg.station_name, data))

    async def _produce(self, batch: SampleBatch) -> None:
        """A device's batch to the unit capture (every poll), then, thinned by report by exception, to the
        telemetry writer; what the unit capture makes of it to the records writer."""
        if not len(batch):
            return
        self.stats.samples_read += len(batch)
        units, events = self.capture.feed(batch)  # every poll: unit records never see the deadband
        if units or events:
            self.metrics.captured(units, events)
            self._put(_Captured(units, events))
        await self._queue.put(self.exceptions.apply(batch))

    def _put(self, record: Event | _Captured) -> None:
        self._records.put_nowait(record)

    def put_captured(self, units: list[dict[str, Any]], events: list[Event]) -> None:
        self._put(_Captured(units, events))

    # -- writer ---------------------------------------------------------------------------

    async def _telemetry_writer(self) -> None:
        """Commit the samples: at least every flush interval, sooner when many wait; while the
        buffer refuses writes, retry every WRITE_RETRY seconds."""
        interval = self.config.buffer.flush_interval
        batches: list[SampleBatch] = []
        try:
            while True:
                try:
                    batches.append(await asyncio.wait_for(self._queue.get(), WRITE_RETRY if self._held else None))
                except TimeoutError:
                    await self._commit_telemetry([])  # nothing new: just retry what is held
                    continue
                samples = len(batches[0])
                deadline = time.monotonic() + interval
                while samples < _FLUSH_SAMPLES:
                    timeout = deadline - time.monotonic()
                    if timeout <= 0:
                        break
                    try:
                        batch = await asyncio.wait_for(self._queue.get(), timeout)
                    except TimeoutError:
                        break
                    batches.append(batch)
                    samples += len(batch)
                # taken off `batches` first: a cancellation during the commit must not commit them twice
                taken, batches = batches, []
                await self._commit_telemetry(taken)
        except asyncio.CancelledError:
            while not self._queue.empty():
                batches.append(self._queue.get_nowait())
            with contextlib.suppress(Exception):  # stopping anyway: what is not committed stays held
                await self._commit_telemetry(batches)
            if self._held:
                log.error("buffer cannot be written: telemetry held in memory is lost at this stop",
                          samples=self._held_samples, path=str(self.config.buffer.path))
            raise

    async def _commit_telemetry(self, batches: list[SampleBatch]) -> None:
        tables = [b.to_arrow() for b in batches]
        try:
            if self._held and self.write_fault is not None and time.monotonic() < self._next_retry:
                # the disk refused a moment ago: hold these too, and retry every WRITE_RETRY
                self._hold(batches, tables, retry_at=self._next_retry)
                await self._drop_oldest_held()
                return
            todo = [*self._held_arrow, *tables]
            committed = span = None
            if todo:
                committed = pa.concat_tables(todo)
                span = (await self.buffer.append(committed)).telemetry
        except BufferWriteFailed as exc:
            self._write_failed(exc)
            self._hold(batches, tables)
            await self._drop_oldest_held()
            return
        except BaseException:
            self._hold(batches, tables)  # damage, a cancellation: kept for the sidecar file, never dropped
            raise
        finally:
            for _ in batches:
                self._queue.task_done()
        for batch in (*self._held, *batches):
            self.stats.devices[batch.device].last_batch = batch
            self.stats.samples_buffered += len(batch)
        if self._held:
            log.warning("buffer written again: held telemetry committed", samples=self._held_samples)
            self._held.clear()
            self._held_arrow.clear()
            self._held_samples = 0
        self.stats.commits += 1
        if committed is not None and span is not None:
            self.forwarder.offer_telemetry(span[0], committed)
        else:
            self.forwarder.notify()
        self._write_recovered()

    def _hold(self, batches: list[SampleBatch], tables: list[pa.Table], retry_at: float | None = None) -> None:
        """Keep batches the buffer refused, with their Arrow form (converted once: a retry only
        concatenates; measured, converting 20k held samples again on every poll stalled the loop)."""
        self._held.extend(batches)
        self._held_arrow.extend(tables)
        self._held_samples += sum(len(b) for b in batches)
        self._next_retry = time.monotonic() + WRITE_RETRY if retry_at is None else retry_at

    async def _drop_oldest_held(self) -> None:
        """Past buffer.hold_samples, the oldest held telemetry goes; its seqs are reserved and named by a gap event."""
        dropped: list[SampleBatch] = []
        while self._held_samples > self.config.buffer.hold_samples and len(self._held) > 1:
            batch = self._held.popleft()
            self._held_arrow.popleft()
            self._held_samples -= len(batch)
            dropped.append(batch)
        if not dropped:
            return
        count = sum(len(b) for b in dropped)
        first, last = await self.buffer.skip_telemetry(count)
        cause = self.write_fault.cause if self.write_fault else "write_failed"
        log.error("buffer cannot be written: oldest held telemetry dropped", seq_first=first, seq_last=last,
                  count=count, cause=cause, held=self._held_samples)
        self._put(Event("gap", now_us(), data={
            "stream": "telemetry", "seq_first": first, "seq_last": last, "count": count,
            "ts_first": min(b.agent_ts for b in dropped), "ts_last": max(b.agent_ts for b in dropped),
            "cause": cause,
            "reason": f"buffer {self.config.buffer.path} cannot be written ({cause}): more than "
                      f"{self.config.buffer.hold_samples} "
                      "samples held in memory, the oldest dropped"}))

    def _write_failed(self, exc: BufferWriteFailed) -> None:
        """The first failure of a run of them: an error line and an alarm event (forwarded from
        memory, since it may not be committed either); the ones after it at debug level."""
        if self.write_fault is not None:
            log.debug("buffer still cannot be written", cause=exc.cause, error=str(exc))
            return
        self.write_fault = exc
        path = self.config.buffer.path
        free = _free_bytes(path)
        doing = (f"holding telemetry in memory (up to {self.config.buffer.hold_samples} samples, then dropping the "
                 "oldest with gap "
                 f"events) and every event and unit record, retrying every {WRITE_RETRY:g}s")
        log.error("buffer cannot be written", cause=exc.cause, path=str(path), free_bytes=free, error=str(exc),
                  doing=doing)
        self._put(Event("alarm", now_us(), data={
            "alarm": exc.cause, "path": str(path), "free_bytes": free, "error": str(exc), "doing": doing}))

    def _write_recovered(self) -> None:
        fault = self.write_fault
        if fault is None or self._held or self.buffer.held_records():
            return
        self.write_fault = None
        path = self.config.buffer.path
        log.warning("buffer written again", cause=fault.cause, path=str(path), free_bytes=_free_bytes(path))
        self._put(Event("alarm", now_us(), data={
            "alarm": fault.cause, "state": "cleared", "path": str(path), "free_bytes": _free_bytes(path)}))

    async def _records_writer(self) -> None:
        """Commit events and unit records at once, whatever the telemetry is doing."""
        taken: list[Event | _Captured] = []
        try:
            while True:
                try:
                    retry = WRITE_RETRY if self.buffer.held_records() else None
                    taken.append(await asyncio.wait_for(self._records.get(), retry))
                except TimeoutError:
                    await self._commit_records([])
                    continue
                while not self._records.empty():
                    taken.append(self._records.get_nowait())
                committing, taken = taken, []
                await self._commit_records(committing)
        except asyncio.CancelledError:
            while not self._records.empty():
                taken.append(self._records.get_nowait())
            try:
                await self._commit_records(taken)
            except Exception:  # stopping anyway (damage): keep them for the sidecar file
                self._unwritten.extend(taken)
            if self.buffer.held_records():
                log.error("buffer cannot be written: events and unit records held in memory are lost at this "
                          "stop (they were published if the broker was reachable)",
                          records=self.buffer.held_records(), path=str(self.config.buffer.path))
            raise

    async def _commit_records(self, taken: list[Event | _Captured]) -> None:
        events: list[Event] = []
        units: list[dict[str, Any]] = []
        for item in taken:
            if isinstance(item, Event):
                events.append(item)
            else:
                events.extend(item.events)
                units.extend(item.units)
        try:
            if events or units:
                result = await self.buffer.append(None, events, units)
                stored = {"events": result.events, "units": result.units}
            elif self.buffer.held_records():
                await self.buffer.retry_records()
                stored = {}
            else:
                return
        except BufferWriteFailed as exc:
            self._write_failed(exc)
            stored = {"events": exc.records[0], "units": exc.records[1]}  # held, chained: published anyway
        else:
            self.stats.commits += 1
            self._write_recovered()
        finally:
            for _ in taken:
                self._records.task_done()
        # straight to the forwarder: no buffer read between the commit and the publish
        self.forwarder.offer(stored)
        self.stats.units += len(units)

    # -- housekeeping ---------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        last_purge = 0.0
        over_cap = False
        while True:
            try:
                over_cap, last_purge = await self._housekeep(over_cap, last_purge)
            except BufferWriteFailed as exc:  # the writers raise the alarm; this just waits
                log.debug("housekeeping skipped: buffer cannot be written", cause=exc.cause)
            await asyncio.sleep(2.0)

    async def _write_status_file(self) -> None:
        self.metrics.snapshot = await write_status_file(self.status_file, self.config.agent.id, self.buffer, SINK,
                                                        self.stats.devices,
                                                        self.forwarder.stats if self.forwarder is not None else None)

    async def _housekeep(self, over_cap: bool, last_purge: float) -> tuple[bool, float]:
        await self._write_status_file()
        cap = await self.buffer.enforce_cap(self.config.buffer.max_size, SINK)
        for gap in cap.gaps:
            log.error("buffer full: telemetry dropped", seq_first=gap.data["seq_first"],
                      seq_last=gap.data["seq_last"], count=gap.data["count"], max_size=self.config.buffer.max_size)
        if cap.gaps:
            self.forwarder.notify()
        if cap.over_cap and not over_cap:
            # Unit records and events are never dropped: say so loudly, once, and keep them.
            log.error("buffer over its size cap with only unit records and events left; keeping them",
                      max_size=self.config.buffer.max_size, path=str(self.config.buffer.path))
            self._put(Event("alarm", now_us(), data={
                "alarm": "buffer_over_cap", "max_size": self.config.buffer.max_size,
                "reason": "only unit records and events left in the buffer, none dropped; "
                          "raise buffer.max_size or restore the connection to the broker"}))
        over_cap = cap.over_cap
        if time.monotonic() - last_purge > 60:
            last_purge = time.monotonic()
            cutoff = now_us() - int(self.config.buffer.retention * 1e6)
            deleted = await self.buffer.purge_delivered(SINK, cutoff)
            if any(deleted.values()):
                log.info("retention purge", **{f"deleted_{k}": v for k, v in deleted.items()})
        return over_cap, last_purge

def use_system_arrow_pool() -> None:
    """Arrow buffers from the C library's allocator, not pyarrow's default mimalloc pool, which keeps
    freed pages: at 317k samples/s the agent's RSS was 205-210 MB with mimalloc and 196-198 MB with
    the system allocator, CPU the same within the run-to-run spread (benchmarks.run --only libmodbus,
    alternating runs). An explicit ARROW_DEFAULT_MEMORY_POOL is left as it is."""
    if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        pa.set_memory_pool(pa.system_memory_pool())


def _free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path.parent).free
    except OSError:
        return None
