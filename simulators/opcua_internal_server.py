"""asyncua's server, as the station simulator needs it: operation limits enforced (for the driver's
chunking) and counted, user/password logins, the trusted client certificates, and a data-change
callback without asyncua's per-change throw-away objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.internal_server import InternalServer
from asyncua.server.internal_session import InternalSession
from asyncua.server.monitored_item_service import MonitoredItemService


class _LimitedSession(InternalSession):
    """A session that refuses Read / CreateMonitoredItems / Browse calls above the server's limits."""

    def _check(self, kind: str, n: int) -> None:
        limit = getattr(self.iserver, "op_limits", {}).get(kind, 0)
        if limit and n > limit:
            self.iserver.refused_calls += 1
            raise ServiceError(ua.StatusCodes.BadTooManyOperations)

    async def read(self, params: ua.ReadParameters) -> list[ua.DataValue]:
        self._check("MaxNodesPerRead", len(params.NodesToRead))
        self.iserver.read_calls += 1
        return await super().read(params)

    async def create_monitored_items(self, params: ua.CreateMonitoredItemsParameters):
        self._check("MaxMonitoredItemsPerCall", len(params.ItemsToCreate))
        self.iserver.create_item_calls += 1
        sub = self.subscription_service.subscriptions.get(params.SubscriptionId)
        if sub is not None and type(sub.monitored_item_srv) is MonitoredItemService:
            sub.monitored_item_srv.__class__ = _SimMonitoredItemService  # before the items bind its callback
        return await super().create_monitored_items(params)

    async def browse(self, params: ua.BrowseParameters) -> list[ua.BrowseResult]:
        self._check("MaxNodesPerBrowse", len(params.NodesToBrowse))
        return await super().browse(params)


class _SimMonitoredItemService(MonitoredItemService):
    """asyncua's data-change callback, minus a throw-away default `MonitoredItemNotification()`
    per change (its empty DataValue/Variant guesses a type: a third of the simulator's CPU per
    change). Same filtering and queueing as `MonitoredItemService.datachange_callback`."""

    async def datachange_callback(self, handle: int, value: ua.DataValue, error: ua.StatusCode | None = None) -> None:
        if error:
            await super().datachange_callback(handle, value, error)
            return
        mid = self._monitored_datachange[handle]
        mdata = self._monitored_items[mid]
        if mdata.mode == ua.MonitoringMode.Disabled:
            return
        mdata.mvalue.set_current_datavalue(value)
        if mdata.filter:
            passed = self._is_data_changed(mdata.mvalue, mdata.filter.Trigger) and \
                self._is_deadband_exceeded(mdata.mvalue, mdata.filter)
        else:
            passed = self._is_data_changed(mdata.mvalue, ua.DataChangeTrigger.StatusValue)
        if passed:
            await self.isub.enqueue_datachange_event(
                mid, ua.MonitoredItemNotification(ClientHandle=mdata.client_handle, Value=value), mdata.queue_size)


class SimInternalServer(InternalServer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.op_limits: dict[str, int] = {}
        self.refused_calls = 0
        self.read_calls = 0
        self.create_item_calls = 0

    def create_session(self, name: str, user: User | None = None, external: bool = False) -> InternalSession:
        user = user if user is not None else User(role=UserRole.Anonymous)
        if not external:
            return super().create_session(name, user=user, external=external)
        return _LimitedSession(self, self.aspace, self.subscription_service, name, user=user, external=external)


class PasswordUserManager:
    def __init__(self, users: dict[str, str], allow_anonymous: bool) -> None:
        self.users = users
        self.allow_anonymous = allow_anonymous

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        if username is None:
            return User(role=UserRole.User) if self.allow_anonymous else None
        if username in self.users and self.users[username] == password:
            return User(role=UserRole.User, name=username)
        return None


def trusted_ders(folder: Path) -> set[bytes]:
    """The DER bytes of every certificate (DER or PEM) in `folder`."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    ders: set[bytes] = set()
    for f in folder.iterdir():
        data = f.read_bytes()
        if b"-----BEGIN CERTIFICATE-----" in data:
            ders.add(x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER))
        elif data:
            ders.add(data)
    return ders
