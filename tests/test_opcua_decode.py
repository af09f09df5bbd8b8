"""The driver's own PublishResponse decoder gives exactly what asyncua's decoder gives.

Responses are encoded by asyncua's own encoder (no hand-made bytes), then decoded both ways;
and against the simulator, subscribed station values take the fast path.
"""

from __future__ import annotations

import datetime as dt

import pytest
from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import nodeid_from_binary, struct_from_binary, struct_to_binary
from fixtures_opcua import *  # noqa: F401,F403
from fixtures_opcua import collect, make_driver

from linetap.drivers.opcua.publish import _decode_data_changes, _NotFast
from linetap.drivers.opcua.values import convert_data_value, convert_raw, variant_type

pytestmark = pytest.mark.timeout(60)

T1 = dt.datetime(2026, 3, 4, 5, 6, 7, 891234, tzinfo=dt.UTC)
T2 = dt.datetime(2026, 3, 4, 5, 6, 8, 5, tzinfo=dt.UTC)


def _dv(value, vtype=None, status=None, source=T1, server=T2, **kw) -> ua.DataValue:
    variant = ua.Variant(value, vtype) if vtype is not None else ua.Variant(value)
    return ua.DataValue(variant, StatusCode=ua.StatusCode(status if status is not None else 0),
                        SourceTimestamp=source, ServerTimestamp=server, **kw)


def _encode(*notifications, sub_id: int = 7, seq: int = 42) -> bytes:
    resp = ua.PublishResponse()
    resp.Parameters.SubscriptionId = sub_id
    resp.Parameters.AvailableSequenceNumbers = [40, 41, 42]
    resp.Parameters.NotificationMessage = ua.NotificationMessage(SequenceNumber=seq, PublishTime=T2,
                                                                 NotificationData=list(notifications))
    resp.Parameters.Results = [ua.StatusCode(0)]
    return struct_to_binary(resp)


def _both(raw: bytes):
    buf = Buffer(raw)
    nodeid_from_binary(buf)
    struct_from_binary(ua.ResponseHeader, buf)
    fast = _decode_data_changes(raw, buf.cur_pos, "utf-8")
    slow = struct_from_binary(ua.PublishResponse, Buffer(raw)).Parameters
    return fast, slow


def _changes(*dvs) -> ua.DataChangeNotification:
    return ua.DataChangeNotification(MonitoredItems=[
        ua.MonitoredItemNotification(ClientHandle=i + 1, Value=dv) for i, dv in enumerate(dvs)])


SCALARS = [
    _dv(True, ua.VariantType.Boolean), _dv(False, ua.VariantType.Boolean),
    _dv(-12, ua.VariantType.SByte), _dv(250, ua.VariantType.Byte),
    _dv(-32000, ua.VariantType.Int16), _dv(65000, ua.VariantType.UInt16),
    _dv(-2_000_000_000, ua.VariantType.Int32), _dv(4_000_000_000, ua.VariantType.UInt32),
    _dv(-(2**62), ua.VariantType.Int64), _dv(2**64 - 2, ua.VariantType.UInt64),
    _dv(1.5, ua.VariantType.Float), _dv(0.1, ua.VariantType.Float), _dv(12345.678901234567, ua.VariantType.Double),
    _dv(float("nan"), ua.VariantType.Double), _dv("Héllo PLC ✓", ua.VariantType.String), _dv("", ua.VariantType.String),
    _dv(None, ua.VariantType.String),  # a null string
    _dv(None, ua.VariantType.Null),  # no value
    _dv(None, ua.VariantType.Null, status=ua.StatusCodes.BadSensorFailure),
    _dv(3.5, ua.VariantType.Double, status=ua.StatusCodes.UncertainLastUsableValue),
    _dv(1.0, ua.VariantType.Double, source=None),  # server timestamp only
    _dv(2.0, ua.VariantType.Double, source=None, server=None),  # no timestamp
    _dv(3.0, ua.VariantType.Double, server=None),
]


def _same(a, b) -> bool:
    return a == b or (a != a and b != b)  # NaN


def test_scalar_data_changes_decode_like_asyncua():
    raw = _encode(_changes(*SCALARS), _changes(*SCALARS[:3]))
    fast, slow = _both(raw)
    assert fast.SubscriptionId == slow.SubscriptionId == 7
    assert fast.SequenceNumber == slow.NotificationMessage.SequenceNumber == 42
    assert len(fast.NotificationData) == len(slow.NotificationMessage.NotificationData) == 2
    expected = [(item.ClientHandle, convert_data_value(item.Value))
                for notif in slow.NotificationMessage.NotificationData for item in notif.MonitoredItems]
    got = [(h, convert_raw(v, code, src)) for h, v, code, src, _ in fast.items]
    assert [vt for *_, vt in fast.items] == [variant_type(item.Value) for notif in
                                             slow.NotificationMessage.NotificationData for item in notif.MonitoredItems]
    assert len(got) == len(expected) == len(SCALARS) + 3
    for (h1, r1), (h2, r2) in zip(got, expected, strict=True):
        assert h1 == h2
        assert all(_same(x, y) and type(x) is type(y) for x, y in zip(r1, r2, strict=True)), (h1, r1, r2)


def test_keepalive_has_no_notifications():
    fast, slow = _both(_encode())
    assert fast.items == [] and fast.NotificationData == [] and not slow.NotificationMessage.NotificationData


@pytest.mark.parametrize("notification", [
    _changes(_dv([1.0, 2.0], ua.VariantType.Double)),  # array
    _changes(_dv(T1, ua.VariantType.DateTime)),  # a type left to asyncua
    _changes(_dv(ua.LocalizedText("x"), ua.VariantType.LocalizedText)),
    _changes(_dv(1.0, ua.VariantType.Double, SourcePicoseconds=5)),
    ua.StatusChangeNotification(Status=ua.StatusCode(ua.StatusCodes.BadTimeout)),
    ua.EventNotificationList(Events=[]),
], ids=["array", "datetime", "localizedtext", "picoseconds", "status-change", "events"])
def test_anything_else_is_left_to_asyncua(notification):
    with pytest.raises(_NotFast):
        _both(_encode(_changes(*SCALARS[:2]), notification))


async def test_subscribed_station_values_take_the_fast_path(opcua_sim):
    driver = make_driver(opcua_sim.endpoint)
    await driver.connect()
    try:
        batches = await collect(driver, 5.0, until=lambda bs: sum(len(b) for b in bs) > 30)
    finally:
        await driver.close()
    assert sum(len(b) for b in batches) > 30
    assert driver.fast_responses > 0 and driver.notifications == sum(len(b) for b in batches)
