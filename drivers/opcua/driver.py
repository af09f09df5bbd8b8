"""OPC UA driver (asyncua client); its config model is `linetap.config.devices.opcua`.

Two modes, same output:

- `subscribe` (default): one subscription with one monitored item per tag. Notifications are
  handled in batches: our own publish callback turns each PublishResponse into one SampleBatch
  (no per-notification task or object from asyncua's handler/iterator APIs, and no bounded
  client-side queue that could drop notifications silently: see MEASURED.md). The common
  PublishResponse (data changes of scalar values) is decoded straight from its bytes
  (`publish.py`); anything else goes through asyncua's decoder.
- `poll`: every `poll_interval`, one Read of every tag (split to the server's operation limits).

Values: scalars of the built-in types as Python values (DateTime as an ISO 8601 string in UTC,
ByteString as hex, LocalizedText as its text, NodeId / QualifiedName as text); a 1-D array as one
JSON string per sample (one tag = one sample, so the unit capture and the buffer stay simple).
Quality from the StatusCode (good / uncertain / bad, reason = the code's name, e.g.
`BadSensorFailure`). `source_ts` = SourceTimestamp, or ServerTimestamp when the server sends no
source timestamp; `agent_ts` always.

Node references: any standard node id string (`ns=2;s=Line.Temp`, `ns=3;i=1001`, `i=2258`,
`nsu=urn:plant:plc;s=Line.Temp` with the namespace URI resolved to an index at every connect), or
a browse path from the Objects folder (`Line/Sealer1/Temperature`, `/Objects/2:Line/2:Sealer1`;
a segment without `idx:` matches the browse name in the device's `namespace` if given, else in
any namespace).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import structlog

from linetap.config.devices.opcua import DEFAULT_ITEMS_PER_CALL, OpcUaDeviceConfig
from linetap.drivers.samples import Quality, SampleBatch, TagNames, now_us

from ..base import DeviceConfigError, DeviceUnreachable, Driver, DriverError, describe_os_error
from .client import chunks, open_client, quiet_disconnect, read_operation_limits
from .errors import describe_error, status_name
from .nodes import read_datatypes, read_units, resolve_nodes
from .publish import DataChanges, install_fast_publish
from .types import FLOAT
from .values import convert_data_value, convert_raw, float32_marks, variant_type

log = structlog.get_logger("linetap.drivers.opcua")


class _Lost:
    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class OpcUaDriver(Driver):
    """One OPC UA server: subscribe (default) or poll every tag; samples in tag order per batch."""

    def __init__(self, config: OpcUaDeviceConfig) -> None:
        super().__init__(config.name)
        self.config = config
        self._names = TagNames(t.name for t in config.tags)  # one object for every polled batch (as Modbus)
        self._client = None
        self._where = f"device {config.name} at {config.endpoint}"
        self._queue: asyncio.Queue[SampleBatch | _Lost] = asyncio.Queue()
        self._generation = 0
        self._socket_cause: str | None = None  # what ended the TCP connection (asyncua keeps only "lost")
        self._last_publish = 0.0
        self._nodeids: list[Any] = []  # resolved ua.NodeId per tag (None: unresolved)
        self._resolve_errors: dict[int, str] = {}
        self._item_errors: dict[int, str] = {}
        from .types import TypeGuard

        self._types = TypeGuard(len(config.tags))  # the type each tag's values must have
        self._limits: dict[str, int] = {}
        self._subscription_id: int | None = None
        self._revised_publishing_interval: float | None = None
        #: engineering unit per tag: from the tag map, else the node's EUInformation (None if neither)
        self.units: dict[str, str | None] = {t.name: t.unit for t in config.tags}
        #: notifications received since the driver was created (all connections)
        self.notifications = 0
        self.publish_responses = 0
        #: of which decoded by `_decode_data_changes` (the rest by asyncua)
        self.fast_responses = 0

    @property
    def tag_names(self) -> list[str]:
        return list(self._names)

    @property
    def operation_limits(self) -> dict[str, int]:
        return dict(self._limits)

    def _per_call(self, server_limit_name: str) -> int:
        server = self._limits.get(server_limit_name, 0)
        cap = self.config.max_items_per_call
        if server > 0:
            return min(server, cap) if cap else server
        return cap or DEFAULT_ITEMS_PER_CALL

    # --- connection ----------------------------------------------------------------------

    async def connect(self) -> None:
        await self.close()
        cfg = self.config
        self._generation += 1
        gen = self._generation
        self._queue = asyncio.Queue()
        self._item_errors = {}
        watchdog = min(max(cfg.timeout / 2, 0.5), 2.0)
        client = await open_client(cfg.name, cfg.endpoint, cfg.security, cfg.timeout, watchdog)
        self._client = client
        self._socket_cause = None
        self._capture_socket_cause(client, gen)

        async def on_lost(exc: Exception) -> None:
            # asyncua's supervisor says `ConnectionError: transport lost`; the socket said what happened
            if gen == self._generation:
                self._queue.put_nowait(_Lost(self._socket_cause or describe_error(exc, cfg.timeout)))

        client.connection_lost_callback = on_lost
        try:
            self._limits = await read_operation_limits(client)
            self._nodeids, self._resolve_errors = await resolve_nodes(client, cfg, self._where)
            self._types = await read_datatypes(client, self._nodeids, self._per_call("MaxNodesPerRead"))
            if cfg.read_units:
                self.units.update(await read_units(
                    client, cfg.tags, self._nodeids, self._per_call("MaxNodesPerTranslateBrowsePathsToNodeIds"),
                    self._per_call("MaxNodesPerRead"), self.name))
            if cfg.mode == "subscribe":
                await self._subscribe(client, gen)
        except DriverError:
            await self.close()
            raise
        except BaseException as exc:
            await self.close()
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise DeviceUnreachable(f"{self._where}: setting up failed: {describe_error(exc, cfg.timeout)}") from None
        bad = {**self._resolve_errors, **self._item_errors}
        if bad:
            idx = sorted(bad)
            self._queue.put_nowait(SampleBatch(
                device=self.name, tag=[self._names[i] for i in idx], value=[None] * len(idx),
                quality=[Quality.BAD] * len(idx), reason=[bad[i] for i in idx], agent_ts=now_us()))
            log.warning("opcua tags not available", device=self.name, count=len(idx),
                        first=f"{self._names[idx[0]]}: {bad[idx[0]]}")
        self._last_publish = time.monotonic()
        log.info("opcua connected", device=cfg.name, endpoint=cfg.endpoint, mode=cfg.mode, tags=len(self._names),
                 security=f"{cfg.security.policy}/{cfg.security.effective_mode}",
                 items_per_call=self._per_call("MaxMonitoredItemsPerCall" if cfg.mode == "subscribe"
                                               else "MaxNodesPerRead"))

    async def close(self) -> None:
        client, self._client = self._client, None
        self._generation += 1
        self._subscription_id = None
        if client is not None:
            client.connection_lost_callback = None
            await quiet_disconnect(client)

    def _lost(self, cause: str) -> DeviceUnreachable:
        return DeviceUnreachable(f"connection to {self._where} lost: {self._socket_cause or cause}")

    def _capture_socket_cause(self, client, gen: int) -> None:
        """asyncua's socket protocol gets the OSError of a lost connection (None: the server closed
        it) and passes it only to a state change; keep it, in words, for the loss reason."""
        protocol = getattr(getattr(client, "uaclient", None), "protocol", None)
        inner = getattr(protocol, "on_connection_lost", None)
        if protocol is None or inner is None:
            return

        def on_connection_lost(exc: Exception | None) -> None:
            if gen == self._generation:
                self._socket_cause = describe_os_error(exc, peer="server")
            inner(exc)

        protocol.on_connection_lost = on_connection_lost

    # --- subscribe -----------------------------------------------------------------------

    async def _subscribe(self, client, gen: int) -> None:
        from asyncua import ua

        cfg = self.config
        pub_ms = cfg.publishing_interval * 1000
        keepalive_count = max(1, math.ceil(cfg.keepalive * 1000 / pub_ms))
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=pub_ms,
            RequestedLifetimeCount=keepalive_count * 10,
            RequestedMaxKeepAliveCount=keepalive_count,
            MaxNotificationsPerPublish=0,  # no limit: one publish carries one cycle's changes
            PublishingEnabled=True,
            Priority=0,
        )
        names, convert, queue = self._names, convert_data_value, self._queue
        n_names = len(names)

        def emit(changes) -> None:
            """One SampleBatch of (client handle, (value, quality, reason, source_ts), Variant type)."""
            agent_ts = now_us()
            tags: list[str] = []
            values: list[Any] = []
            quality: list[int] = []
            reason: list[str | None] = []
            source: list[int | None] = []
            floats: list[int] = []  # positions of Float (float32) values
            check = self._types.check
            for h, (v, q, r, s), vt in changes:
                h -= 1
                if 0 <= h < n_names:
                    v, q, r = check(h, v, q, r, vt)
                    if vt == FLOAT and type(v) is float:
                        floats.append(len(values))
                    tags.append(names[h])
                    values.append(v)
                    quality.append(q)
                    reason.append(r)
                    source.append(s)
            if tags:
                self.notifications += len(tags)
                queue.put_nowait(SampleBatch(device=self.name, tag=tags, value=values, quality=quality,
                                             reason=reason, agent_ts=agent_ts, source_ts=source,
                                             float32=float32_marks(values, floats)))

        def on_publish(result: ua.PublishResult | DataChanges) -> None:
            if gen != self._generation:
                return
            self._last_publish = time.monotonic()
            self.publish_responses += 1
            if type(result) is DataChanges:  # decoded by _decode_data_changes
                self.fast_responses += 1
                emit((h, convert_raw(raw, code, src), vt) for h, raw, code, src, vt in result.items)
                return
            changes = []
            for notif in result.NotificationMessage.NotificationData or ():
                items = getattr(notif, "MonitoredItems", None)
                if items is not None:
                    changes.extend((item.ClientHandle, convert(item.Value), variant_type(item.Value))
                                   for item in items)
                elif isinstance(notif, ua.StatusChangeNotification):
                    queue.put_nowait(_Lost(f"subscription ended by the server ({notif.Status.name})"))
            emit(changes)

        install_fast_publish(client.uaclient.session)  # before the publish loop starts
        result = await client.uaclient.create_subscription(params, on_publish)
        self._subscription_id = result.SubscriptionId
        self._revised_publishing_interval = result.RevisedPublishingInterval
        default_sampling = cfg.publishing_interval if cfg.sampling_interval is None else cfg.sampling_interval
        requests = []
        for i, tag in enumerate(cfg.tags):
            nodeid = self._nodeids[i]
            if nodeid is None:
                continue
            deadband = tag.deadband or cfg.deadband
            mparams = ua.MonitoringParameters(
                ClientHandle=i + 1,
                SamplingInterval=(tag.sampling_interval if tag.sampling_interval is not None
                                  else default_sampling) * 1000,
                QueueSize=cfg.queue_size,
                DiscardOldest=True,
            )
            if deadband is not None and deadband.value > 0:
                mparams.Filter = ua.DataChangeFilter(
                    Trigger=ua.DataChangeTrigger.StatusValue,
                    DeadbandType=(ua.DeadbandType.Absolute if deadband.type == "absolute"
                                  else ua.DeadbandType.Percent),
                    DeadbandValue=deadband.value,
                )
            requests.append((i, ua.MonitoredItemCreateRequest(
                ItemToMonitor=ua.ReadValueId(NodeId=nodeid, AttributeId=ua.AttributeIds.Value),
                MonitoringMode=ua.MonitoringMode.Reporting,
                RequestedParameters=mparams,
            )))
        per_call = self._per_call("MaxMonitoredItemsPerCall")
        for chunk in chunks(requests, per_call):
            cparams = ua.CreateMonitoredItemsParameters(
                SubscriptionId=self._subscription_id,
                ItemsToCreate=[r for _, r in chunk],
                TimestampsToReturn=ua.TimestampsToReturn.Both,
            )
            try:
                results = await client.uaclient.create_monitored_items(cparams)
            except ua.UaStatusCodeError as exc:
                raise DeviceConfigError(
                    f"{self._where}: the server refused {len(chunk)} monitored items in one call "
                    f"({describe_error(exc)}); set max_items_per_call lower") from None
            for (i, _), res in zip(chunk, results, strict=False):
                if not res.StatusCode.is_good():
                    self._item_errors[i] = res.StatusCode.name

    # --- poll ----------------------------------------------------------------------------

    async def read(self) -> SampleBatch:
        """One Read of every tag (chunked to the server's MaxNodesPerRead)."""
        from asyncua import ua

        client = self._client
        if client is None:
            raise self._lost("not connected")
        agent_ts = now_us()
        n = len(self._names)
        values: list[Any] = [None] * n
        quality: list[int] = [Quality.BAD] * n
        reason: list[str | None] = [None] * n
        source: list[int | None] = [None] * n
        for i, why in self._resolve_errors.items():
            reason[i] = why
        todo = [i for i in range(n) if self._nodeids[i] is not None]
        floats: list[int] = []  # positions of Float (float32) values
        per_call = self._per_call("MaxNodesPerRead")
        convert = convert_data_value
        for chunk in chunks(todo, per_call):
            rparams = ua.ReadParameters(
                MaxAge=0, TimestampsToReturn=ua.TimestampsToReturn.Both,
                NodesToRead=[ua.ReadValueId(NodeId=self._nodeids[i], AttributeId=ua.AttributeIds.Value)
                             for i in chunk])
            try:
                results = await asyncio.wait_for(client.uaclient.read(rparams), self.config.timeout)
            except ua.UaStatusCodeError as exc:
                name = status_name(getattr(exc, "code", 0))
                if name in ("BadSessionIdInvalid", "BadSessionClosed", "BadSecureChannelClosed",
                            "BadConnectionClosed", "BadServerHalted", "BadShutdown",
                            "BadSecureChannelIdInvalid"):
                    raise self._lost(describe_error(exc)) from None
                for i in chunk:
                    reason[i] = name
                continue
            except (asyncio.CancelledError, GeneratorExit):
                raise
            except BaseException as exc:
                raise self._lost(describe_error(exc, self.config.timeout)) from None
            for i, dv in zip(chunk, results, strict=False):
                vt = variant_type(dv)
                values[i], quality[i], reason[i], source[i] = convert(dv)
                values[i], quality[i], reason[i] = self._types.check(i, values[i], quality[i], reason[i], vt)
                if vt == FLOAT and type(values[i]) is float:
                    floats.append(i)
        return SampleBatch(device=self.name, tag=self._names, value=values, quality=quality,
                           reason=reason, agent_ts=agent_ts, source_ts=source,
                           float32=float32_marks(values, floats))

    # --- samples -------------------------------------------------------------------------

    async def samples(self) -> AsyncIterator[SampleBatch]:
        if self._client is None:
            raise self._lost("not connected")
        if self.config.mode == "poll":
            async for batch in self._poll_loop():
                yield batch
            return
        queue = self._queue
        keepalive = self.config.keepalive
        stale_after = 3 * max(keepalive, self.config.publishing_interval) + self.config.timeout
        while True:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                try:
                    item = await asyncio.wait_for(queue.get(), keepalive)
                except TimeoutError:
                    silent = time.monotonic() - self._last_publish
                    if silent > stale_after:
                        await self.close()
                        raise self._lost(f"no publish response for {silent:.1f}s") from None
                    continue
            if type(item) is _Lost:
                await self.close()
                raise self._lost(item.reason)
            yield item

    async def _poll_loop(self) -> AsyncIterator[SampleBatch]:
        interval = self.config.poll_interval
        queue = self._queue
        next_at = time.monotonic()
        while True:
            # Batches queued at connect (tags that could not be resolved) and loss notices first.
            while not queue.empty():
                item = queue.get_nowait()
                if type(item) is _Lost:
                    await self.close()
                    raise self._lost(item.reason)
                yield item
            started = time.monotonic()
            try:
                batch = await self.read()
            except DeviceUnreachable:
                await self.close()
                raise
            self.read_seconds = time.monotonic() - started
            yield batch
            next_at += interval
            now = time.monotonic()
            if next_at < now:
                next_at += (int((now - next_at) // interval) + 1) * interval
            try:
                item = await asyncio.wait_for(queue.get(), next_at - now)
            except TimeoutError:
                continue
            if type(item) is _Lost:
                await self.close()
                raise self._lost(item.reason)
            yield item
