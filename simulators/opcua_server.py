"""The heat-sealing station served over OPC UA (asyncua server), with fault injection for tests.

Values are written from the model every `update_interval` seconds (only the ones that changed),
with SourceTimestamp = the time of the update.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from asyncua import Server, ua

from .opcua_address_space import (
    NAMESPACE_URI,
    STATION_VARIABLES,
    build_decoy,
    build_station,
    field_value,
    write_operation_limits,
)
from .opcua_internal_server import PasswordUserManager, SimInternalServer, trusted_ders
from .served import ServedStation
from .station import StationModel, StationSnapshot

log = structlog.get_logger("linetap.simulators.opcua")


class OpcUaStationServer(ServedStation):
    """Serves a `StationModel` over OPC UA on `host:port` (port 0: a free port, kept across restarts).

    Security (optional): give `certificate` + `private_key` (server's) and `secure_only=True` to
    offer only SignAndEncrypt endpoints; `users={name: password}` requires a user login
    (anonymous refused); `trust_dir` (client certificates) makes the server refuse clients whose
    certificate is not in it.
    """

    def __init__(
        self,
        model: StationModel,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        clock: Callable[[], float] | None = None,
        speed: float = 1.0,
        update_interval: float = 0.05,
        bulk_count: int = 0,
        bulk_interval: float = 0.1,
        operation_limits: dict[str, int] | None = None,
        certificate: str | Path | None = None,
        private_key: str | Path | None = None,
        secure_only: bool = False,
        users: dict[str, str] | None = None,
        trust_dir: str | Path | None = None,
        application_uri: str = "urn:linetap:simulator:heat-sealer:server",
        reject_untrusted_at: str = "session",
        record_services: bool = False,
        decoy_namespace: str | None = None,
    ) -> None:
        super().__init__(model, clock, speed)
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self.update_interval = update_interval
        self.bulk_count = bulk_count
        self.bulk_interval = bulk_interval
        self.operation_limits = dict(operation_limits or {})
        self.certificate = certificate
        self.private_key = private_key
        self.secure_only = secure_only
        self.users = users
        self.trust_dir = trust_dir
        self.application_uri = application_uri
        if reject_untrusted_at not in ("session", "channel", "channel_fault"):
            raise ValueError("reject_untrusted_at is 'session' (asyncua's way), 'channel' (ErrorMessage) or "
                             "'channel_fault' (ServiceFault as the OpenSecureChannel response)")
        self.reject_untrusted_at = reject_untrusted_at
        # every service request type received (see simulators/opcua_hooks.py), when record_services
        self.service_log: list[str] | None = [] if record_services else None
        self.decoy_namespace = decoy_namespace
        self.decoy_ns: int | None = None
        self._server: Server | None = None
        self._iserver: SimInternalServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._bulk_task: asyncio.Task[None] | None = None
        self.ns: int = 2
        self._nodes: dict[str, ua.NodeId] = {}  # browse name -> node id (station variables)
        self._bulk_nodes: list[ua.NodeId] = []
        self._served: dict[str, tuple[Any, int]] = {}  # browse name -> (value, status) last written
        self._frozen: dict[str, Any] = {}
        self._status: dict[str, int] = {}
        self.writes = 0  # value writes since start (all nodes)
        self.bulk_writes = 0  # of which bulk items
        self.bulk_rounds = 0  # rounds of the bulk loop (every item written once per round)
        self.bulk_late = 0  # rounds that started a whole interval or more behind schedule (CPU-bound)

    # --- life cycle ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("server not started")
        return self._port

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def node_id(self, name: str) -> str:
        """`nsu=...;s=Sealer1.<name>` for a station variable's browse name."""
        return f"nsu={NAMESPACE_URI};s=Sealer1.{name}"

    async def start(self) -> None:
        if self._server is not None:
            return
        port = self._port if self._port is not None else self._requested_port
        user_manager = PasswordUserManager(self.users, allow_anonymous=False) if self.users else None
        iserver = SimInternalServer(user_manager=user_manager)
        server = Server(iserver=iserver)
        await server.init()
        server.set_endpoint(f"opc.tcp://{self.host}:{port}")
        server.set_server_name("linetap heat-sealer simulator")
        await server.set_application_uri(self.application_uri)
        if self.certificate is not None:
            await server.load_certificate(str(self.certificate))
            await server.load_private_key(str(self.private_key))
        if self.secure_only:
            server.set_security_policy([
                ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
                ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
                ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
            ])
        elif self.certificate is None:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        if self.users:
            server.set_identity_tokens([ua.UserNameIdentityToken])
        if self.trust_dir is not None:
            from asyncua.crypto.truststore import TrustStore
            from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions

            store = TrustStore([Path(self.trust_dir)], [])
            await store.load()
            server.set_certificate_validator(CertificateValidator(
                CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_CLIENT, store))
        if self.trust_dir is not None and self.reject_untrusted_at in ("channel", "channel_fault"):
            iserver.channel_trust = trusted_ders(Path(self.trust_dir))
            iserver.channel_reply = "fault" if self.reject_untrusted_at == "channel_fault" else "error"
        from linetap.simulators import opcua_hooks

        opcua_hooks.install()
        iserver.service_log = self.service_log
        # No ClientAndServer: a plain server.
        server.application_type = ua.ApplicationType.Server
        self.ns = await server.register_namespace(NAMESPACE_URI)
        if self.decoy_namespace is not None:
            # registered first, so a path without a namespace finds the decoy's nodes first
            self.decoy_ns = await server.register_namespace(self.decoy_namespace)
            await build_decoy(server, self.decoy_ns, self.model)
        self._nodes, self._bulk_nodes = await build_station(server, self.ns, self.model, self.bulk_count)
        await write_operation_limits(server, self.operation_limits)
        iserver.op_limits = dict(self.operation_limits)
        await server.start()
        self._server, self._iserver = server, iserver
        bound = server.bserver.port if server.bserver is not None else port
        self._port = bound
        self._start_clock()
        self._served.clear()
        await self._update()
        self._task = asyncio.create_task(self._run(), name="opcua-sim-update")
        if self._bulk_nodes:
            self._bulk_task = asyncio.create_task(self._run_bulk(), name="opcua-sim-bulk")
        log.info("opcua simulator listening", endpoint=self.endpoint, namespace=NAMESPACE_URI,
                 secure_only=self.secure_only, users=bool(self.users), bulk=self.bulk_count)

    async def stop(self) -> None:
        server, self._server = self._server, None
        for task in (self._task, self._bulk_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        self._task = self._bulk_task = None
        if server is None:
            return
        with contextlib.suppress(Exception):
            await server.stop()
        await asyncio.sleep(0)


    # --- serving ---------------------------------------------------------------------------

    def snapshot(self) -> StationSnapshot:
        return self.model.step(self.model_time())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.update_interval)
            try:
                await self._update()
            except Exception:  # never let the update loop die silently in a test
                log.exception("opcua simulator update failed")

    async def _update(self) -> None:
        server = self._server
        if server is None:
            return
        snap = self.snapshot()
        now = _dt.datetime.now(_dt.UTC)
        for browse, field, vtype, _, _ in STATION_VARIABLES:
            if browse in self._frozen:
                continue
            value = field_value(snap, field)
            status = self._status.get(browse, ua.StatusCodes.Good)
            if self._served.get(browse) == (value, status):
                continue
            self._served[browse] = (value, status)
            await server.write_attribute_value(self._nodes[browse], ua.DataValue(
                ua.Variant(value, vtype), StatusCode=ua.StatusCode(status), SourceTimestamp=now, ServerTimestamp=now))
            self.writes += 1

    async def _run_bulk(self) -> None:
        """Every bulk item changes once per `bulk_interval`, on a fixed schedule. A round that
        finds itself a whole interval or more behind (CPU-bound) skips the missed rounds
        (`bulk_late`), so `bulk_writes` over time is the change rate actually offered."""
        loop = asyncio.get_running_loop()
        interval = self.bulk_interval
        next_at = loop.time()
        write = self._iserver.aspace.write_attribute_value  # no two wrapper coroutines per write
        value_attr = ua.AttributeIds.Value
        double = ua.VariantType.Double
        while True:
            next_at += interval
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                behind = int(-delay // interval)
                if behind:
                    self.bulk_late += behind
                    next_at += behind * interval
                await asyncio.sleep(0)  # let the server send what the last round queued
            if self._server is None:
                return
            t = self.model_time()
            now = _dt.datetime.now(_dt.UTC)
            for i, nid in enumerate(self._bulk_nodes):
                await write(nid, value_attr, _SharedDataValue(
                    ua.Variant(round(i + math.sin(t + i / 10), 6), double), SourceTimestamp=now, ServerTimestamp=now))
            self.writes += len(self._bulk_nodes)
            self.bulk_writes += len(self._bulk_nodes)
            self.bulk_rounds += 1

    # --- fault injection -------------------------------------------------------------------

    @property
    def sessions(self) -> int:
        return len(self._iserver.asyncio_transports) if self._server and self._iserver else 0

    def drop_sessions(self) -> int:
        """Close every client connection (the listener stays up). Returns how many were closed."""
        if self._iserver is None:
            return 0
        transports = list(self._iserver.asyncio_transports)
        for t in transports:
            with contextlib.suppress(Exception):
                t.close()
        return len(transports)

    async def set_status(self, name: str, status: int | str = "BadSensorFailure") -> None:
        """Serve station variable `name` (browse name, e.g. Temperature) with this StatusCode."""
        self._check_name(name)
        code = getattr(ua.StatusCodes, status) if isinstance(status, str) else int(status)
        self._status[name] = code
        self._frozen.pop(name, None)
        await self._update()

    async def clear_status(self, name: str | None = None) -> None:
        if name is None:
            self._status.clear()
        else:
            self._status.pop(name, None)
        await self._update()

    async def freeze(self, name: str, value: Any = None) -> None:
        """Stop updating station variable `name`; with `value`, serve that value from now on."""
        self._check_name(name)
        if value is not None and self._server is not None:
            vtype = next(v for b, _, v, _, _ in STATION_VARIABLES if b == name)
            now = _dt.datetime.now(_dt.UTC)
            await self._server.write_attribute_value(self._nodes[name], ua.DataValue(
                ua.Variant(value, vtype), SourceTimestamp=now, ServerTimestamp=now))
        self._frozen[name] = value

    async def unfreeze(self, name: str | None = None) -> None:
        if name is None:
            self._frozen.clear()
        else:
            self._frozen.pop(name, None)
        self._served.clear()
        await self._update()

    async def write(self, name: str, value: Any, status: int = ua.StatusCodes.Good,
                    vtype: ua.VariantType | None = None) -> None:
        """Write station variable `name` once (freeze it first, or the model overwrites it).
        `vtype`: send the value as another Variant type than the node's DataType (a faulty PLC)."""
        self._check_name(name)
        assert self._server is not None
        declared = next(v for b, _, v, _, _ in STATION_VARIABLES if b == name)
        vtype = declared if vtype is None else vtype
        now = _dt.datetime.now(_dt.UTC)
        aspace = self._server.iserver.aspace
        if vtype != declared:  # asyncua's address space refuses it; a faulty server does not
            aspace._is_expected_variant_type = lambda *_a: True
        try:
            await self._server.write_attribute_value(self._nodes[name], ua.DataValue(
                ua.Variant(value, vtype), StatusCode=ua.StatusCode(status), SourceTimestamp=now, ServerTimestamp=now))
        finally:
            aspace.__dict__.pop("_is_expected_variant_type", None)

    def _check_name(self, name: str) -> None:
        if name not in {b for b, *_ in STATION_VARIABLES}:
            raise ValueError(f"unknown station variable {name!r}; one of "
                             f"{', '.join(b for b, *_ in STATION_VARIABLES)}")

    @property
    def stats(self) -> dict[str, int]:
        i = self._iserver
        return {"read_calls": i.read_calls, "create_item_calls": i.create_item_calls,
                "refused_calls": i.refused_calls} if i else {}


class _SharedDataValue(ua.DataValue):
    """A DataValue that asyncua's monitored items may share instead of deep-copying.

    asyncua's server deep-copies every written DataValue once per monitored item
    (`MonitoredItemValues.set_current_datavalue`), which was most of the simulator's CPU per change.
    The simulator never mutates a value after writing it, so the copy is not needed. Encoded
    exactly like a DataValue (the serializer follows the declared field type)."""

    def __deepcopy__(self, memo: dict[int, Any]) -> _SharedDataValue:
        return self


async def serve_opcua(
    host: str = "127.0.0.1",
    port: int = 4840,
    *,
    cycle_time: float = 2.0,
    out_of_limit_share: float = 0.1,
    seed: int = 1,
    bulk_count: int = 0,
    bulk_interval: float = 0.1,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve a heat-sealing station until `stop` is set (or forever): `linetap simulate opcua`."""
    model = StationModel(seed=seed, cycle_time=cycle_time, out_of_limit_share=out_of_limit_share, keep_units=10_000)
    server = OpcUaStationServer(model, host=host, port=port, bulk_count=bulk_count, bulk_interval=bulk_interval)
    await server.start()
    log.info("heat-sealer simulator running", endpoint=server.endpoint, namespace=NAMESPACE_URI,
             cycle_time=cycle_time, out_of_limit_share=out_of_limit_share, seed=seed)
    try:
        if stop is None:
            await asyncio.Event().wait()
        else:
            await stop.wait()
    finally:
        await server.stop()
