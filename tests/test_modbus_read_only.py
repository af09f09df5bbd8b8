"""Read-only by construction: a logging TCP proxy between the agent and the Modbus station
simulator parses every request frame the agent sends (MBAP header + function code) and only
function codes 1-4 (read coils, discrete inputs, holding and input registers) ever pass."""

from __future__ import annotations

import asyncio
import contextlib
import struct

from agent_helpers import known_value_tags, line_config, modbus_device, running_agent

from linetap.simulators import STATION_TAGS, ModbusStationServer, StationModel

READ_FUNCTIONS = {1, 2, 3, 4}


class LoggingProxy:
    """Forwards TCP both ways; cuts the client's byte stream into MBAP frames and logs each
    request's (transaction id, protocol id, unit id, function code). A frame that does not parse
    is logged as `malformed`: nothing the agent sends goes unseen."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.requests: list[tuple[int, int, int, int]] = []
        self.malformed: list[bytes] = []
        self._tasks: set[asyncio.Task] = set()

    async def __aenter__(self) -> LoggingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await self._server.wait_closed()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        up = asyncio.create_task(self._requests(client_r, server_w))
        down = asyncio.create_task(self._pipe(server_r, client_w))
        self._tasks |= {up, down}
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        for task in (up, down):
            task.cancel()
        for w in (client_w, server_w):
            w.close()

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = b""
        while chunk := await reader.read(4096):
            buf += chunk
            while len(buf) >= 8:
                tid, protocol, length, unit = struct.unpack(">HHHB", buf[:7])
                if protocol != 0 or not 2 <= length <= 254:
                    self.malformed.append(buf)
                    buf = b""
                    break
                if len(buf) < 6 + length:
                    break
                self.requests.append((tid, protocol, unit, buf[7]))
                buf = buf[6 + length:]
            writer.write(chunk)
            await writer.drain()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(4096):
            writer.write(chunk)
            await writer.drain()


async def test_only_read_function_codes_leave_the_agent(tmp_path) -> None:
    class NoBroker:  # the forwarder retries in the background; the Modbus side does not care
        host, port = "127.0.0.1", 1

    # every table: holding and input registers, coils, discrete inputs (function codes 1-4)
    tags = [*known_value_tags(), *[{**t, "name": f"st_{t['name']}"} for t in STATION_TAGS]]
    model = StationModel(seed=11, cycle_time=2.0, idle_time=0.5, out_of_limit_share=0.2)
    async with ModbusStationServer(model, host="127.0.0.1", port=0) as sim, LoggingProxy(sim.port) as proxy:
        cfg = line_config(tmp_path, NoBroker(), [modbus_device(proxy.port, name="heat-sealer-2", tags=tags,
                                                               poll_interval="50ms")])
        async with running_agent(cfg) as agent:
            for _ in range(200):
                await asyncio.sleep(0.05)
                if agent.stats.devices["heat-sealer-2"].samples >= 10 * len(tags):
                    break
            assert agent.stats.devices["heat-sealer-2"].samples >= 10 * len(tags)

    assert proxy.malformed == []
    functions = [f for _, _, _, f in proxy.requests]
    assert len(functions) >= 40
    assert set(functions) <= READ_FUNCTIONS, sorted(set(functions) - READ_FUNCTIONS)
    assert set(functions) == READ_FUNCTIONS  # every table was read, so the proxy saw them all
    assert {unit for _, _, unit, _ in proxy.requests} == {1}


async def test_the_proxy_sees_a_write() -> None:
    """The check above could not miss one: a write single register (6) through the proxy is logged."""
    model = StationModel(seed=11, cycle_time=2.0, idle_time=0.5)
    async with ModbusStationServer(model, host="127.0.0.1", port=0) as sim, LoggingProxy(sim.port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(struct.pack(">HHHBBHH", 1, 0, 6, 1, 6, 1000, 42))
        await writer.drain()
        await asyncio.wait_for(reader.read(12), 5)  # the simulator's reply (or exception) came back
        writer.close()
    assert [f for _, _, _, f in proxy.requests] == [6]
