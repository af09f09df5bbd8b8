"""Server-side hooks for the OPC UA simulator: what independent servers do that asyncua's does not.

- `service_log`: every service request type the server receives (`"ReadRequest"`, ...), plus
  `"OpenSecureChannelRequest"` / `"CloseSecureChannelRequest"`, so a test can prove the agent only reads.
- `channel_trust`: refuse an untrusted client certificate at OpenSecureChannel with an OPC UA
  ErrorMessage `BadSecurityChecksFailed` and close the socket, as open62541, Prosys and most PLC
  servers do (asyncua's server answers CreateSession with a ServiceFault instead); with
  `channel_reply = "fault"`, with a ServiceFault as the OpenSecureChannel response, as other servers do.

Both are attributes of the simulator's internal server (None: off); the patch is installed once.
"""

from __future__ import annotations

from typing import Any

from asyncua import ua
from asyncua.server.uaprocessor import UaProcessor
from asyncua.ua.ua_binary import struct_from_binary, uatcp_to_binary

_installed = False


def _type_name(typeid: Any) -> str:
    for name, value in vars(ua.ObjectIds).items():
        if value == typeid.Identifier and name.endswith("_Encoding_DefaultBinary"):
            return name.removesuffix("_Encoding_DefaultBinary")
    return f"i={typeid.Identifier}"


def install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    orig_process_message = UaProcessor._process_message
    orig_open = UaProcessor.open_secure_channel
    orig_process = UaProcessor.process

    async def _process_message(self, typeid, requesthdr, seqhdr, body):
        log = getattr(self.iserver, "service_log", None)
        if log is not None:
            log.append(_type_name(typeid))
        return await orig_process_message(self, typeid, requesthdr, seqhdr, body)

    def open_secure_channel(self, algohdr, seqhdr, body):
        log = getattr(self.iserver, "service_log", None)
        if log is not None:
            log.append("OpenSecureChannelRequest")
        trust = getattr(self.iserver, "channel_trust", None)
        sender = getattr(algohdr, "SenderCertificate", None)
        if trust is not None and sender and not self._connection.is_open():
            from asyncua.client.client import _first_cert_from_chain

            if _first_cert_from_chain(sender) not in trust and getattr(self.iserver, "channel_reply", "") == "fault":
                # answered inside the secure channel: a signed/encrypted ServiceFault as the OPN response
                request = struct_from_binary(ua.OpenSecureChannelRequest, body)
                self._connection.select_policy(algohdr.SecurityPolicyURI, sender, request.Parameters.SecurityMode)
                fault = ua.ServiceFault()
                fault.ResponseHeader.ServiceResult = ua.StatusCode(ua.StatusCodes.BadSecurityChecksFailed)
                self.send_response(request.RequestHeader.RequestHandle, seqhdr, fault, ua.MessageType.SecureOpen)
                return
            if _first_cert_from_chain(sender) not in trust:
                err = ua.ErrorMessage(ua.StatusCode(ua.StatusCodes.BadSecurityChecksFailed),
                                      "certificate not trusted")
                self._transport.write(uatcp_to_binary(ua.MessageType.Error, err))
                self._transport.close()
                return
        return orig_open(self, algohdr, seqhdr, body)

    async def process(self, header, body):
        if header.MessageType == ua.MessageType.SecureClose:
            log = getattr(self.iserver, "service_log", None)
            if log is not None:
                log.append("CloseSecureChannelRequest")
        return await orig_process(self, header, body)

    UaProcessor._process_message = _process_message
    UaProcessor.open_secure_channel = open_secure_channel
    UaProcessor.process = process
