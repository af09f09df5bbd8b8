"""A connected asyncua Client for one OPC UA server: secured and logged in as configured, a refused
connect in words, a disconnect that never hangs, and the server's operation limits. The driver
and `linetap browse` connect through here."""

from __future__ import annotations

import asyncio

from linetap.config.devices.opcua import OpcUaSecurity
from linetap.config.secrets import FileProblem

from ..base import DeviceConfigError, DeviceUnreachable, DriverError
from .errors import describe_error
from .security import apply_security


async def open_client(name: str, endpoint: str, security: OpcUaSecurity, timeout: float,
                      watchdog_interval: float = 1.0):
    """A connected asyncua Client (secured and authenticated as configured).

    Raises DriverError / DeviceUnreachable with a message naming `name`, the endpoint and the cause.
    """
    from asyncua import Client

    where = f"device {name} at {endpoint}"
    client = Client(endpoint, timeout=timeout, watchdog_intervall=watchdog_interval)
    client.name = client.description = f"linetap {name}"
    client.application_uri = f"urn:linetap:{name}"
    client.session_timeout = 60_000
    from .errors import record_server_errors

    server_errors = record_server_errors(client)
    try:
        if security.policy != "None":
            await apply_security(client, security, timeout, where)
        if security.username:
            client.set_user(security.username)
            try:
                pw = security.password_value()
            except FileProblem as err:
                raise DriverError(str(err)) from None
            if pw is not None:
                client.set_password(pw)
        await asyncio.wait_for(client.connect(), timeout)
    except DriverError:
        await quiet_disconnect(client)
        raise
    except BaseException as exc:
        await quiet_disconnect(client)
        if isinstance(exc, asyncio.CancelledError):
            raise
        raise _connect_error(where, exc, timeout, security, server_errors) from None
    return client



def _connect_error(where: str, exc: BaseException, timeout: float, security: OpcUaSecurity,
                   server_errors: dict | None = None) -> DriverError:
    from asyncua import ua

    from .errors import security_cause, status_of

    cause = describe_error(exc, timeout)
    name = status_of(exc, server_errors or {})
    if name is not None:
        specific = security_cause(name, security)
        if specific is not None:
            # a configuration problem: retrying as-is will not help, but it is not the network
            return DriverError(f"cannot connect to {where}: {specific}")
        if not isinstance(exc, ua.UaStatusCodeError):
            cause = describe_error(ua.UaStatusCodeError(server_errors["status"].value), timeout)
    elif isinstance(exc, ua.UaError) and "No matching endpoints" in str(exc):
        login = f"user {security.username}" if security.username else "anonymous"
        return DeviceConfigError(f"cannot connect to {where}: the server offers no endpoint for security policy "
                                 f"{security.policy}/{security.effective_mode} with {login} login "
                                 "(does it require a secured connection? set security.policy)")
    return DeviceUnreachable(f"cannot connect to {where}: {cause}")



async def quiet_disconnect(client) -> None:
    try:
        await asyncio.wait_for(client.disconnect(), 2.0)
    except BaseException:
        pass
    try:
        client.disconnect_socket()
    except BaseException:
        pass
    for task_name in ("_supervisor_task", "_stale_watchdog_task", "_renew_channel_task"):
        task = getattr(client, task_name, None)
        if task is not None and not task.done():
            task.cancel()



async def read_operation_limits(client) -> dict[str, int]:
    """The server's OperationLimits (0 = no limit or not published)."""
    from asyncua import ua

    names = ["MaxNodesPerRead", "MaxMonitoredItemsPerCall", "MaxNodesPerBrowse",
             "MaxNodesPerTranslateBrowsePathsToNodeIds"]
    ids = [ua.NodeId(getattr(ua.ObjectIds, f"Server_ServerCapabilities_OperationLimits_{n}")) for n in names]
    out = dict.fromkeys(names, 0)
    try:
        results = await client.uaclient.read_attributes(ids, ua.AttributeIds.Value)
    except Exception:
        return out
    for n, dv in zip(names, results, strict=False):
        if dv.StatusCode is not None and not dv.StatusCode.is_good():
            continue
        v = dv.Value.Value if dv.Value is not None else None
        if isinstance(v, int) and v > 0:
            out[n] = v
    return out


def chunks(seq: list, size: int):
    for i in range(0, len(seq), size):
        yield seq[i:i + size]
