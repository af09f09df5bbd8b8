"""`linetap browse`: the YAML tag-map skeleton from the simulator validates and reads the same values."""

from __future__ import annotations

import asyncio
import textwrap

import pytest
from fixtures_opcua import *  # noqa: F401,F403
from fixtures_opcua import collect
from ruamel.yaml import YAML

from linetap.agent.cli.browse import browse, browse_async
from linetap.config.devices.opcua import OpcUaDeviceConfig
from linetap.config.loader import load_config
from linetap.drivers import DeviceConfigError, DeviceUnreachable
from linetap.drivers.opcua import OpcUaDriver
from linetap.drivers.samples import Quality
from linetap.simulators.opcua_address_space import KNOWN_VALUES, NAMESPACE_URI, STATION_VARIABLES

pytestmark = pytest.mark.timeout(60)


async def test_browse_output_validates_and_reads(opcua_sim, tmp_path):
    text = await browse_async(opcua_sim.endpoint)
    tags = YAML(typ="safe").load(text)["tags"]
    by_name = {t["name"]: t for t in tags}
    assert len(tags) == len(STATION_VARIABLES) + len(KNOWN_VALUES)
    t = by_name["Line.Sealer1.Temperature"]
    assert t == {"name": "Line.Sealer1.Temperature", "node": f"nsu={NAMESPACE_URI};s=Sealer1.Temperature",
                 "data_type": "Double", "unit": "degC"}
    assert by_name["Line.Known.DoubleArray"]["data_type"] == "Double[]"
    assert by_name["Line.Sealer1.UnitCount"]["data_type"] == "UInt32"
    assert not any("Server" in n for n in by_name), "namespace 0 is skipped"

    # Wrapped in a device block (indented under `devices:`), the whole file loads.
    device = textwrap.indent(text, "    ")
    config = tmp_path / "line.yaml"
    config.write_text(textwrap.dedent("""\
        agent: {id: l1, enterprise: acme, site: cork, area: packaging, line: line1}
        devices:
          - protocol: opcua
            name: sealer1
            endpoint: %s
        """) % opcua_sim.endpoint + device)
    cfg = load_config(config)
    dev = cfg.devices[0]
    assert isinstance(dev, OpcUaDeviceConfig) and len(dev.tags) == len(tags)

    driver = OpcUaDriver(dev.model_copy(update={"publishing_interval": 0.05}))
    await driver.connect()
    try:
        batches = await collect(driver, 3.0, until=lambda bs: bool(bs))
    finally:
        await driver.close()
    assert set(batches[0].tag) == set(by_name)
    assert all(q == Quality.GOOD for q in batches[0].quality)


async def test_browse_root_and_depth(opcua_sim):
    text = await browse_async(opcua_sim.endpoint, root="Line/Sealer1", depth=0)
    names = [t["name"] for t in YAML(typ="safe").load(text)["tags"]]
    assert names == [b for b, *_ in STATION_VARIABLES]
    text = await browse_async(opcua_sim.endpoint, root=f"nsu={NAMESPACE_URI};s=Line", depth=0)
    assert YAML(typ="safe").load(text)["tags"] == []  # only folders directly below Line
    with pytest.raises(DeviceConfigError, match="no 'Nope'"):
        await browse_async(opcua_sim.endpoint, root="Line/Nope")


async def test_browse_sync_entry_point_and_unreachable(opcua_sim):
    text = await asyncio.to_thread(browse, opcua_sim.endpoint, "Line/Sealer1", 0)
    assert "Sealer1.Temperature" in text
    await opcua_sim.stop()
    with pytest.raises(DeviceUnreachable, match="refused"):
        await browse_async(opcua_sim.endpoint)


DECOY_URI = "urn:acme-gateway:legacy-plc"


@pytest.fixture
async def decoy_sim():
    """The heat sealer, plus a second namespace (registered first) with the same browse names."""
    from linetap.simulators.opcua_server import OpcUaStationServer
    from linetap.simulators.station import StationModel

    server = OpcUaStationServer(StationModel(seed=7), port=0, decoy_namespace=DECOY_URI)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def _path_config(endpoint: str, **kw) -> OpcUaDeviceConfig:
    return OpcUaDeviceConfig.model_validate({
        "protocol": "opcua", "name": "sealer1", "endpoint": endpoint, "timeout": "2s", "mode": "poll",
        "poll_interval": "100ms", "tags": [{"name": "temperature", "node": "Line/Sealer1/Temperature"}], **kw})


async def test_ambiguous_browse_path_is_a_config_error_naming_namespaces(decoy_sim):
    driver = OpcUaDriver(_path_config(decoy_sim.endpoint))
    with pytest.raises(DeviceConfigError) as err:
        await driver.connect()
    msg = str(err.value)
    assert "sealer1" in msg and "`Line/Sealer1/Temperature` exists in namespaces" in msg, msg
    assert f"{DECOY_URI} ({decoy_sim.decoy_ns})" in msg and f"{NAMESPACE_URI} ({decoy_sim.ns})" in msg, msg
    assert "set `namespace:` on the device or use an `nsu=` node id" in msg


async def test_namespace_setting_resolves_the_ambiguity(decoy_sim):
    driver = OpcUaDriver(_path_config(decoy_sim.endpoint, namespace=NAMESPACE_URI))
    await driver.connect()
    try:
        batches = await collect(driver, 3.0, until=lambda bs: bool(bs))
    finally:
        await driver.close()
    assert batches and batches[0].quality[0] == Quality.GOOD
    snap_temp = decoy_sim.snapshot().temperature
    assert abs(batches[-1].value[0] - snap_temp) < 50


async def test_browse_root_ambiguous_is_refused_and_output_warns(decoy_sim):
    with pytest.raises(DeviceConfigError, match="exists in namespaces"):
        await browse_async(decoy_sim.endpoint, root="Line/Sealer1")
    text = await browse_async(decoy_sim.endpoint)
    assert "# WARNING:" in text and DECOY_URI in text and "more than one namespace" in text
    tags = YAML(typ="safe").load(text)["tags"]
    assert all(t["node"].startswith("nsu=") for t in tags)
    scoped = await browse_async(decoy_sim.endpoint, root=f"nsu={NAMESPACE_URI};s=Sealer1")
    assert "# WARNING" not in scoped
