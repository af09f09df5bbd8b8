"""OPC UA errors in words: one line for an asyncua / OS exception (`describe_error`), and for a
refused connect what the server refused, why, and what to change.

asyncua loses the server's reason in some refusals: an OPC UA ErrorMessage in answer to
OpenSecureChannel (how open62541, Prosys and most PLC servers refuse an untrusted client
certificate: `BadSecurityChecksFailed`) disconnects the socket, and the waiting call then fails
on an internal `assert` (`AssertionError`) or a bare `ConnectionError`. Other servers answer
OpenSecureChannel with a ServiceFault, which asyncua takes for the channel response and then fails
on the same `assert`. `record_server_errors` keeps the ErrorMessage / ServiceFault status per client
(and turns the ServiceFault into its status code), and `security_cause` turns it (or a status code
error) into one sentence naming the cause and the fix.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from ..base import DriverError, describe_os_error

_HINTS = {
    "BadUserAccessDenied": "wrong user or password",
    "BadIdentityTokenInvalid": "user identity not accepted (wrong user, password or token type)",
    "BadIdentityTokenRejected": "wrong user or password",
    "BadCertificateUntrusted": "the server does not trust this client's certificate: add it to the server's "
    "trusted certificates",
    "BadSecurityChecksFailed": "security checks failed: the server rejected this client's certificate "
    "(not trusted?) or the keys do not match",
    "BadCertificateUriInvalid": "the application URI in the certificate does not match",
    "BadCertificateTimeInvalid": "certificate expired or not yet valid",
    "BadCertificateUseNotAllowed": "certificate not usable for this purpose (key usage)",
    "BadSecurityPolicyRejected": "security policy not accepted by the server",
    "BadSecurityModeRejected": "security mode not accepted by the server",
    "BadTooManySessions": "the server has no free session",
    "BadSessionIdInvalid": "session no longer valid on the server",
    "BadSessionClosed": "session closed by the server",
    "BadTimeout": "the server did not answer in time",
    "BadServerHalted": "server halted",
    "BadShutdown": "server shutting down",
    "BadNodeIdUnknown": "no such node on the server",
    "BadTcpEndpointUrlInvalid": "endpoint URL path not served",
}


def status_name(code: int) -> str:
    from asyncua import ua

    try:
        return ua.StatusCode(code).name
    except Exception:
        return f"0x{code:08X}"


def describe_error(exc: BaseException, timeout: float | None = None) -> str:
    """One line for the engineer: the cause of an asyncua / OS exception."""
    from asyncua import ua
    from asyncua.common.utils import ServiceError

    if isinstance(exc, DriverError):
        return str(exc)
    if isinstance(exc, ua.UaStatusCodeError | ServiceError):
        name = status_name(getattr(exc, "code", 0))
        hint = _HINTS.get(name)
        return f"{name}: {hint}" if hint else name
    if isinstance(exc, TimeoutError | asyncio.TimeoutError) or (isinstance(exc, OSError) and exc.errno):
        text = describe_os_error(exc, timeout, peer="server")
        if text == "connection refused":
            return "connection refused (is the server running, and the host and port right?)"
        return text
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

# status names whose cause is the client certificate as seen by the server
_CLIENT_CERT_REJECTED = {"BadSecurityChecksFailed", "BadCertificateUntrusted", "BadCertificateInvalid",
                         "BadCertificateChainIncomplete", "BadCertificateIssuerRevocationUnknown",
                         "BadCertificateRevocationUnknown", "BadCertificateRevoked", "BadCertificateIssuerRevoked"}


def record_server_errors(client: Any) -> dict[str, Any]:
    """Remember the status of every ErrorMessage the server sends on `client`'s connections.

    Returns the dict that receives it (`"status"`: the last ua.StatusCode, `"reason"`: its text)."""
    seen: dict[str, Any] = {}
    uaclient = getattr(client, "uaclient", None)
    make = getattr(uaclient, "_make_protocol", None)
    if make is None:
        return seen

    def make_protocol():
        protocol = make()
        inner = protocol._process_received_message

        def process(msg):
            from asyncua import ua

            if isinstance(msg, ua.ErrorMessage) and msg.Error is not None:
                seen["status"] = msg.Error
                seen["reason"] = msg.Reason
            elif isinstance(msg, ua.Message) and isinstance(msg.SecurityHeader(), ua.AsymmetricAlgorithmHeader):
                status = _channel_fault(msg)
                if status is not None:
                    # A ServiceFault answering OpenSecureChannel: asyncua would hand
                    # it to open_secure_channel as if it were the response and fail on its `assert`.
                    # Raised here, asyncua's receive loop fails the pending request with the status.
                    seen["status"] = status
                    seen["reason"] = "ServiceFault in answer to OpenSecureChannel"
                    raise ua.UaStatusCodeError(status.value)
            return inner(msg)

        protocol._process_received_message = process
        return protocol

    uaclient._make_protocol = make_protocol
    return seen


def _channel_fault(msg: Any) -> Any:
    """The ServiceResult of a ServiceFault carried by an OpenSecureChannel message, else None."""
    from asyncua import ua
    from asyncua.ua.ua_binary import nodeid_from_binary, struct_from_binary

    body = msg.body()
    try:
        if nodeid_from_binary(body) != ua.FourByteNodeId(ua.ObjectIds.ServiceFault_Encoding_DefaultBinary):
            return None
        status = struct_from_binary(ua.ResponseHeader, body).ServiceResult
    except Exception:  # noqa: BLE001 - not a ServiceFault we can read: asyncua decides
        return None
    return status if status is not None and not status.is_good() else None


def status_of(exc: BaseException | None, seen: dict[str, Any]) -> str | None:
    """The status name behind a failed connect: the exception's own, else a recorded ErrorMessage."""
    from asyncua import ua

    if isinstance(exc, ua.UaStatusCodeError):
        return status_name(getattr(exc, "code", 0))
    status = seen.get("status")
    if status is not None:
        return status_name(status.value)
    return None


def security_cause(name: str, security: Any) -> str | None:
    """One sentence for a refusal caused by security settings, or None when `name` is not one."""
    cert = Path(security.certificate).resolve() if getattr(security, "certificate", None) else None
    if name in _CLIENT_CERT_REJECTED:
        if cert is None:
            return (f"{name}: the server refused the secure channel; configure security.certificate and "
                    "private_key and trust that certificate on the server")
        return (f"{name}: the server does not trust linetap's certificate: trust `{cert}` on the server "
                "(copy it into the server's trusted certificates, or accept it in its certificate manager)")
    if name == "BadCertificateUriInvalid":
        return (f"{name}: the server rejected linetap's certificate `{cert}`: its application URI does not "
                "match; create one with `linetap certs create --application-uri ...`")
    if name == "BadCertificateTimeInvalid":
        return (f"{name}: the server says linetap's certificate `{cert}` is expired or not yet valid "
                "(check the line PC's clock, or create a new one with `linetap certs create`)")
    if name == "BadCertificateUseNotAllowed":
        return f"{name}: the server says linetap's certificate `{cert}` may not be used by a client (key usage)"
    if name in ("BadSecurityPolicyRejected", "BadSecurityModeRejected"):
        what = "policy" if "Policy" in name else "mode"
        return (f"{name}: the server does not accept security {what} "
                f"{security.policy}/{security.effective_mode}; set security.policy and security.mode to one "
                "it offers (`linetap browse` lists them)")
    if name.startswith(("BadUser", "BadIdentity")):
        if not getattr(security, "username", None):
            return f"{name}: the server refuses anonymous users; set security.username and password"
        return (f"{name}: wrong user or password for user {security.username!r}: check security.username "
                "and security.password / password_file")
    return None
