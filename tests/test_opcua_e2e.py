"""OPC UA station simulator -> agent (subscribe) -> DuckDB buffer -> Mosquitto -> subscriber."""

from __future__ import annotations

import pytest
from agent_helpers import line_config, payloads, running_agent
from fixtures_opcua import *  # noqa: F401,F403

from linetap.simulators.opcua_address_space import STATION_OPCUA_TAGS

pytestmark = pytest.mark.timeout(60)


def samples_of(msgs) -> list[dict]:
    out = []
    for doc in payloads(msgs, "/telemetry"):
        s = doc["samples"]
        for i in range(doc["count"]):
            out.append({k: s[k][i] for k in ("tag", "value", "quality", "reason", "source_ts", "agent_ts")})
    return out


async def test_subscribed_values_reach_the_broker(tmp_path, broker, capture, opcua_sim):
    device = {"protocol": "opcua", "name": "sealer1", "endpoint": opcua_sim.endpoint,
              "publishing_interval": "100ms", "timeout": "2s", "tags": STATION_OPCUA_TAGS}
    cfg = line_config(tmp_path, broker, [device])
    async with running_agent(cfg):
        await capture.until(lambda m: {s["tag"] for s in samples_of(m)} >= {"temperature", "cycle_active"}
                            and len(samples_of(m)) > 2 * len(STATION_OPCUA_TAGS), timeout=20)
    got = samples_of(capture.messages)
    assert {s["tag"] for s in got} == {t["name"] for t in STATION_OPCUA_TAGS}
    assert all(s["quality"] == "good" for s in got), [s for s in got if s["quality"] != "good"][:3]
    assert all(isinstance(s["source_ts"], int) and s["source_ts"] <= s["agent_ts"] + 1_000_000 for s in got)
    setpoints = [s["value"] for s in got if s["tag"] == "setpoint"]
    assert setpoints and setpoints[0] == 180.0
