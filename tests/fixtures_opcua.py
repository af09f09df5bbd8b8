"""OPC UA test fixtures: the station simulator on 127.0.0.1 port 0, certificates, a sample collector.

Import from the OPC UA test modules: `from fixtures_opcua import *`.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from linetap.agent.cli.certs import create_certificate
from linetap.config.devices.opcua import OpcUaDeviceConfig
from linetap.drivers.opcua import OpcUaDriver
from linetap.drivers.samples import SampleBatch
from linetap.simulators.opcua_address_space import STATION_OPCUA_TAGS
from linetap.simulators.opcua_server import OpcUaStationServer
from linetap.simulators.station import StationModel

__all__ = ["collect", "make_driver", "opcua_pki", "opcua_sim", "station_config"]


def station_config(endpoint: str, **overrides: Any) -> OpcUaDeviceConfig:
    data: dict[str, Any] = {"protocol": "opcua", "name": "sealer1", "endpoint": endpoint,
                            "publishing_interval": "50ms", "timeout": "2s", "keepalive": "1s",
                            "tags": STATION_OPCUA_TAGS}
    data.update(overrides)
    return OpcUaDeviceConfig.model_validate(data)


def make_driver(endpoint: str, **overrides: Any) -> OpcUaDriver:
    return OpcUaDriver(station_config(endpoint, **overrides))


async def collect(driver: OpcUaDriver, seconds: float, *, until=None) -> list[SampleBatch]:
    """Batches from `driver.samples()` for `seconds` (or until `until(batches)` is true)."""
    batches: list[SampleBatch] = []
    deadline = time.monotonic() + seconds

    async def run() -> None:
        async for batch in driver.samples():
            batches.append(batch)
            if until is not None and until(batches):
                return

    try:
        await asyncio.wait_for(run(), max(deadline - time.monotonic(), 0.01))
    except TimeoutError:
        pass
    return batches


@pytest.fixture
async def opcua_sim():
    """A heat-sealer OPC UA server (seed 7, real time) on 127.0.0.1, free port (`.endpoint`)."""
    server = OpcUaStationServer(StationModel(seed=7, cycle_time=2.0, idle_time=0.5), host="127.0.0.1", port=0)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture(scope="session")
def opcua_pki(tmp_path_factory) -> dict[str, Path]:
    """Server and client certificates; `trusted_clients/` holds the client cert, `trusted_servers/`
    the server cert; `rogue_*` is a client certificate nobody trusts."""
    d = tmp_path_factory.mktemp("pki")
    server_cert, server_key = create_certificate(d / "server.der", d / "server.pem", server=True,
                                                 application_uri="urn:linetap:simulator:heat-sealer:server",
                                                 common_name="sim", hostnames=["localhost", "127.0.0.1"])
    client_cert, client_key = create_certificate(d / "client.der", d / "client.pem",
                                                 application_uri="urn:linetap:test:client", common_name="linetap")
    rogue_cert, rogue_key = create_certificate(d / "rogue.der", d / "rogue.pem",
                                               application_uri="urn:linetap:test:rogue", common_name="rogue")
    other_cert, _ = create_certificate(d / "other-server.der", d / "other-server.pem", server=True,
                                       application_uri="urn:other:server", common_name="other")
    (d / "trusted_clients").mkdir()
    (d / "trusted_clients" / "client.der").write_bytes(client_cert.read_bytes())
    (d / "trusted_servers").mkdir()
    (d / "trusted_servers" / "server.der").write_bytes(server_cert.read_bytes())
    (d / "empty_trust").mkdir()
    return {"server_cert": server_cert, "server_key": server_key, "client_cert": client_cert,
            "client_key": client_key, "rogue_cert": rogue_cert, "rogue_key": rogue_key,
            "other_server_cert": other_cert, "trusted_clients": d / "trusted_clients",
            "trusted_servers": d / "trusted_servers", "empty_trust": d / "empty_trust", "dir": d}
