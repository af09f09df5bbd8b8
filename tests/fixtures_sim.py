"""Simulator fixtures: a seeded station model and a Modbus station server on 127.0.0.1, port 0."""

from __future__ import annotations

import pytest

from linetap.simulators import ModbusStationServer, StationModel

__all__ = ["ModelClock", "modbus_sim", "station_model"]


class ModelClock:
    """A hand-driven model clock: `clock.t = 12.5` moves the served station to 12.5 model seconds."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def station_model() -> StationModel:
    """A heat sealer: seed 7, 2 s cycle, 0.5 s idle, 10 % out-of-limit units."""
    return StationModel(seed=7, cycle_time=2.0, idle_time=0.5, out_of_limit_share=0.1)


@pytest.fixture
async def modbus_sim(station_model: StationModel):
    """A running ModbusStationServer for `station_model` on 127.0.0.1 (free port: `.port`).

    The model runs on real time (1 model second per second); tests that need exact control
    build their own server with `clock=ModelClock()`.
    """
    server = ModbusStationServer(station_model, host="127.0.0.1", port=0)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
