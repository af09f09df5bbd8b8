"""The agent never writes to equipment: the simulator records every OPC UA service request it
receives, and the driver (subscribe, poll, reconnect) and `linetap browse` send only reading ones."""

from __future__ import annotations

import contextlib

import pytest
from fixtures_opcua import *  # noqa: F401,F403
from fixtures_opcua import collect, make_driver

from linetap.agent.cli.browse import browse_async
from linetap.drivers import DeviceUnreachable
from linetap.simulators.opcua_server import OpcUaStationServer
from linetap.simulators.station import StationModel

pytestmark = pytest.mark.timeout(60)

ALLOWED = {
    "ReadRequest", "BrowseRequest", "BrowseNextRequest", "TranslateBrowsePathsToNodeIdsRequest",
    "GetEndpointsRequest", "FindServersRequest",
    "OpenSecureChannelRequest", "CloseSecureChannelRequest",
    "CreateSessionRequest", "ActivateSessionRequest", "CloseSessionRequest",
    "CreateSubscriptionRequest", "ModifySubscriptionRequest", "SetPublishingModeRequest",
    "DeleteSubscriptionsRequest", "TransferSubscriptionsRequest",
    "CreateMonitoredItemsRequest", "ModifyMonitoredItemsRequest", "SetMonitoringModeRequest",
    "SetTriggeringRequest", "DeleteMonitoredItemsRequest",
    "PublishRequest", "RepublishRequest",
}
FORBIDDEN = {"WriteRequest", "CallRequest", "AddNodesRequest", "DeleteNodesRequest", "AddReferencesRequest",
             "DeleteReferencesRequest", "HistoryUpdateRequest", "RegisterServerRequest", "RegisterServer2Request"}


@pytest.fixture
async def recording_sim():
    server = OpcUaStationServer(StationModel(seed=7, cycle_time=2.0, idle_time=0.5), port=0, record_services=True)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_hook_sees_a_write():
    """The recorder itself: a client that writes shows up as WriteRequest (so the check below means something)."""
    from asyncua import Client, ua

    server = OpcUaStationServer(StationModel(seed=7), port=0, record_services=True)
    await server.start()
    try:
        async with Client(server.endpoint) as client:
            node = client.get_node(server.node_id("Setpoint"))
            with pytest.raises(ua.UaStatusCodeError):  # refused (anonymous), but received
                await node.write_value(ua.Variant(150.0, ua.VariantType.Double))
        assert "WriteRequest" in server.service_log
    finally:
        await server.stop()


async def test_driver_and_browse_send_only_reading_services(recording_sim):
    for mode in ("subscribe", "poll"):
        driver = make_driver(recording_sim.endpoint, mode=mode, poll_interval="100ms")
        await driver.connect()
        try:
            assert await collect(driver, 3.0, until=lambda bs: len(bs) >= 3)
            recording_sim.drop_sessions()  # the reconnect path too
            with contextlib.suppress(DeviceUnreachable):
                await collect(driver, 1.0)
            await driver.connect()
            assert await collect(driver, 3.0, until=lambda bs: bool(bs))
        finally:
            await driver.close()
    await browse_async(recording_sim.endpoint)
    await browse_async(recording_sim.endpoint, root="Line/Sealer1")
    sent = set(recording_sim.service_log)
    assert {"ReadRequest", "BrowseRequest", "CreateSessionRequest", "PublishRequest",
            "CreateMonitoredItemsRequest"} <= sent, sent
    assert not sent & FORBIDDEN, sent & FORBIDDEN
    assert sent <= ALLOWED, sent - ALLOWED
