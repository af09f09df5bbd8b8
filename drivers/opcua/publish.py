"""PublishResponse decoding, fast path.

asyncua decodes every notification into a MonitoredItemNotification / DataValue / Variant /
datetime objects: ~80% of the agent's CPU per notification at 20k+ notifications/s. The common
response (DataChangeNotifications of scalar built-in values) is decoded here straight from the
bytes into (client handle, value, status code, source µs); anything else (events, status
changes, arrays, other types, picoseconds, odd timestamps) raises _NotFast and asyncua decodes the
whole response as before. Values come out as asyncua's decoder gives them (struct formats of
ua_binary.Primitives, strings decoded the same way), so `convert_raw` treats both alike.
"""

from __future__ import annotations

import struct
from typing import Any

import structlog

from .errors import describe_error

log = structlog.get_logger("linetap.drivers.opcua")

_U8, _U16, _I32, _U32, _I64 = (struct.Struct(f) for f in ("<B", "<H", "<i", "<I", "<q"))
_SCALAR_FORMATS: dict[int, struct.Struct] = {  # Variant built-in type id -> encoding
    1: struct.Struct("<?"), 2: struct.Struct("<b"), 3: struct.Struct("<B"), 4: struct.Struct("<h"),
    5: struct.Struct("<H"), 6: struct.Struct("<i"), 7: struct.Struct("<I"), 8: struct.Struct("<q"),
    9: struct.Struct("<Q"), 10: struct.Struct("<f"), 11: struct.Struct("<d"),
}
_STRING = 12
_DATA_CHANGE_NOTIFICATION = 811  # DataChangeNotification_Encoding_DefaultBinary (ns 0)
_EPOCH_1601_US = 11_644_473_600_000_000  # µs from 1601-01-01 (OPC UA DateTime) to 1970-01-01
_MAX_TICKS = 2_650_467_743_990_000_000  # asyncua.ua.uatypes.MAX_OPC_FILETIME (from there on asyncua clamps)


class DataChanges:
    """A decoded PublishResponse of data changes. Stands in for both `ua.PublishResponse` and its
    `Parameters` / `NotificationMessage` where asyncua's publish loop reads them (subscription id,
    sequence number; `NotificationData` non-empty = acknowledge), plus the decoded `items`."""

    __slots__ = ("NotificationData", "SequenceNumber", "SubscriptionId", "items")

    def __init__(self, subscription_id: int, sequence: int, notifications: int,
                 items: list[tuple[int, Any, int, int | None, int]]) -> None:
        self.SubscriptionId = subscription_id
        self.SequenceNumber = sequence
        self.NotificationData = [None] * notifications
        self.items = items

    @property
    def Parameters(self) -> DataChanges:  # noqa: N802 - asyncua's names
        return self

    @property
    def NotificationMessage(self) -> DataChanges:  # noqa: N802
        return self


def _ticks_us(ticks: int) -> int:
    if not 0 <= ticks < _MAX_TICKS:
        raise _NotFast
    return ticks // 10 - _EPOCH_1601_US


class _NotFast(Exception):
    """The response holds something `_decode_data_changes` leaves to asyncua."""


def _decode_data_changes(raw: bytes, pos: int, encoding: str) -> DataChanges:
    """The PublishResult at `raw[pos:]` (after the response header). Raises _NotFast."""
    sub_id = _U32.unpack_from(raw, pos)[0]
    n = _I32.unpack_from(raw, pos + 4)[0]
    pos += 8 + 4 * max(n, 0) + 1  # AvailableSequenceNumbers, MoreNotifications
    seq = _U32.unpack_from(raw, pos)[0]
    count = _I32.unpack_from(raw, pos + 12)[0]  # after the PublishTime
    pos += 16
    items: list[tuple[int, Any, int, int | None, int]] = []
    append = items.append
    scalars = _SCALAR_FORMATS
    u32_from, i32_from, i64_from = _U32.unpack_from, _I32.unpack_from, _I64.unpack_from
    for _ in range(max(count, 0)):
        enc = raw[pos]  # ExtensionObject: type id (four-byte or numeric node id), encoding, length, body
        if enc == 1:
            ns, tid = raw[pos + 1], _U16.unpack_from(raw, pos + 2)[0]
            pos += 4
        elif enc == 2:
            ns, tid = _U16.unpack_from(raw, pos + 1)[0], u32_from(raw, pos + 3)[0]
            pos += 7
        else:
            raise _NotFast
        if ns != 0 or tid != _DATA_CHANGE_NOTIFICATION or raw[pos] != 1:
            raise _NotFast
        end = pos + 5 + i32_from(raw, pos + 1)[0]
        m = i32_from(raw, pos + 5)[0]
        pos += 9
        for _ in range(max(m, 0)):
            handle = u32_from(raw, pos)[0]
            mask = raw[pos + 4]
            pos += 5
            if mask & 0x30:  # picoseconds
                raise _NotFast
            value = None
            vtype = 0
            if mask & 0x01:
                vtype = raw[pos]
                pos += 1
                fmt = scalars.get(vtype)
                if fmt is not None:
                    value = fmt.unpack_from(raw, pos)[0]
                    pos += fmt.size
                elif vtype == _STRING:
                    length = i32_from(raw, pos)[0]
                    pos += 4
                    if length >= 0:
                        value = raw[pos:pos + length].decode(encoding, errors="surrogateescape")
                        pos += length
                elif vtype != 0:  # arrays (0x80, 0x40 bits), other types
                    raise _NotFast
            code = 0
            if mask & 0x02:
                code = u32_from(raw, pos)[0]
                pos += 4
            src = None
            if mask & 0x04:
                src = _ticks_us(i64_from(raw, pos)[0])
                pos += 8
            if mask & 0x08:
                server = _ticks_us(i64_from(raw, pos)[0])
                pos += 8
                if src is None:
                    src = server
            append((handle, value, code, src, vtype))
        if pos != end and i32_from(raw, pos)[0] not in (-1, 0):  # DiagnosticInfos
            raise _NotFast
        pos = end
    return DataChanges(sub_id, seq, max(count, 0), items)


def install_fast_publish(session) -> None:
    """Replace `session.publish` (asyncua's UaSession, whose publish loop calls it) by one that
    decodes data changes with `_decode_data_changes` and everything else with asyncua."""
    from asyncua import ua
    from asyncua.common.utils import Buffer
    from asyncua.ua.ua_binary import get_string_encoding, nodeid_from_binary, struct_from_binary
    from asyncua.ua.uaerrors import UaStructParsingError

    async def publish(acks: list) -> Any:
        request = ua.PublishRequest()
        request.Parameters.SubscriptionAcknowledgements = acks if acks else []
        data = await session._send_request(request, timeout=0)
        raw = bytes(data)
        try:
            buf = Buffer(raw)
            nodeid_from_binary(buf)
            struct_from_binary(ua.ResponseHeader, buf)
            return _decode_data_changes(raw, buf.cur_pos, get_string_encoding())
        except Exception:  # noqa: BLE001 - _NotFast, or anything unexpected: asyncua's decoder decides
            pass
        try:
            return struct_from_binary(ua.PublishResponse, Buffer(raw))
        except Exception as ex:
            log.warning("opcua publish response not decoded", cause=describe_error(ex))
            raise UaStructParsingError from ex

    session.publish = publish
