"""A value whose Variant type does not match the node's DataType is bad with the reason, never good."""

from __future__ import annotations

import pytest
from asyncua import ua
from fixtures_opcua import *  # noqa: F401,F403
from fixtures_opcua import collect, make_driver

from linetap.drivers.opcua.types import TypeGuard
from linetap.drivers.samples import Quality

pytestmark = pytest.mark.timeout(60)


def _last(batches, tag):
    for b in reversed(batches):
        for t, v, q, r in zip(b.tag, b.value, b.quality, b.reason, strict=False):
            if t == tag:
                return v, q, r
    raise AssertionError(f"no sample of {tag}")


@pytest.mark.parametrize("mode", ["subscribe", "poll"])
async def test_string_from_a_double_node_is_bad(opcua_sim, mode):
    await opcua_sim.freeze("Temperature", 180.5)
    driver = make_driver(opcua_sim.endpoint, mode=mode, poll_interval="100ms")
    await driver.connect()
    try:
        first = await collect(driver, 3.0, until=lambda bs: any("temperature" in b.tag for b in bs))
        assert _last(first, "temperature")[1] == Quality.GOOD
        await opcua_sim.write("Temperature", "180.5", vtype=ua.VariantType.String)
        batches = await collect(driver, 3.0, until=lambda bs: any(
            t == "temperature" and q == Quality.BAD for b in bs for t, q in zip(b.tag, b.quality, strict=False)))
    finally:
        await driver.close()
    value, quality, reason = _last(batches, "temperature")
    assert quality == Quality.BAD and value is None
    assert "BadTypeMismatch" in reason and "Double" in reason and "String" in reason, reason


async def test_double_from_an_int32_node_is_bad(opcua_sim):
    await opcua_sim.freeze("State", 1)
    driver = make_driver(opcua_sim.endpoint, mode="poll", poll_interval="100ms")
    await driver.connect()
    try:
        await opcua_sim.write("State", 1.5, vtype=ua.VariantType.Double)
        batches = await collect(driver, 3.0, until=lambda bs: len(bs) >= 2)
    finally:
        await driver.close()
    _, quality, reason = _last(batches, "state")
    assert quality == Quality.BAD and "Int32" in reason, reason


def test_first_seen_type_when_the_node_type_is_abstract():
    guard = TypeGuard(1)
    assert guard.check(0, 1.5, Quality.GOOD, None) == (1.5, Quality.GOOD, None)
    value, quality, reason = guard.check(0, "1.5", Quality.GOOD, None)
    assert value is None and quality == Quality.BAD and "floating-point" in reason and "String" in reason
    assert guard.check(0, None, Quality.BAD, "BadSensorFailure") == (None, Quality.BAD, "BadSensorFailure")


async def test_int16_from_an_int32_node_is_bad(opcua_sim):
    """The Python kinds agree (both ints); the Variant types do not."""
    await opcua_sim.freeze("State", 1)
    driver = make_driver(opcua_sim.endpoint, mode="poll", poll_interval="100ms")
    await driver.connect()
    try:
        first = await collect(driver, 3.0, until=lambda bs: len(bs) >= 1)
        assert _last(first, "state")[1] == Quality.GOOD
        await opcua_sim.write("State", 2, vtype=ua.VariantType.Int16)
        batches = await collect(driver, 3.0, until=lambda bs: len(bs) >= 2)
    finally:
        await driver.close()
    value, quality, reason = _last(batches, "state")
    assert value is None and quality == Quality.BAD
    assert "Int32" in reason and "Int16" in reason, reason


@pytest.mark.parametrize("mode", ["subscribe", "poll"])
async def test_float_from_a_double_node_is_bad(opcua_sim, mode):
    await opcua_sim.freeze("Temperature", 180.5)
    driver = make_driver(opcua_sim.endpoint, mode=mode, poll_interval="100ms")
    await driver.connect()
    try:
        await collect(driver, 3.0, until=lambda bs: any("temperature" in b.tag for b in bs))
        await opcua_sim.write("Temperature", 181.5, vtype=ua.VariantType.Float)
        batches = await collect(driver, 3.0, until=lambda bs: any(
            t == "temperature" and q == Quality.BAD for b in bs for t, q in zip(b.tag, b.quality, strict=False)))
    finally:
        await driver.close()
    _, quality, reason = _last(batches, "temperature")
    assert quality == Quality.BAD and "Double" in reason and "Float" in reason, reason


def test_first_seen_variant_type_holds():
    guard = TypeGuard(1)
    assert guard.check(0, 5, Quality.GOOD, None, 6) == (5, Quality.GOOD, None)
    assert guard.check(0, 6, Quality.GOOD, None, 6) == (6, Quality.GOOD, None)
    value, quality, reason = guard.check(0, 7, Quality.GOOD, None, 4)
    assert value is None and quality == Quality.BAD and "Int32" in reason and "Int16" in reason
