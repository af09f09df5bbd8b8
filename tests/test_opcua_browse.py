"""`linetap browse`: the YAML tag-map skeleton from the simulator validates and reads the same values."""

from __future__ import annotations

import asyncio
import textwrap

import pytest
from fixtures_opcua import *  # noqa: F401,F403
from fixtures_opcua import collect
from ruamel.yaml import YAML

from linetap.agent.browse import browse, browse_async
from linetap.agent.records import Quality
from linetap.config.loader import load_config
from linetap.drivers import DeviceConfigError, DeviceUnreachable
from linetap.drivers.opcua import OpcUaDeviceConfig, OpcUaDriver
from linetap.simulators.opcua_server import KNOWN_VALUES, NAMESPACE_URI, STATION_VARIABLES

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
