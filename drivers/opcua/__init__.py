"""OPC UA: the driver (`driver`: connect, subscribe / poll loops) and its parts: the connected
asyncua client (`client`), the secure channel and server trust (`security`), errors in words
(`errors`), tag nodes resolved at connect (`nodes`, `identity`), values as samples (`values`,
`types`) and the fast PublishResponse decoder (`publish`). `linetap.drivers.opcua:OpcUaDriver`
is the registry's entry."""

from __future__ import annotations

from .driver import OpcUaDriver

__all__ = ["OpcUaDriver"]
