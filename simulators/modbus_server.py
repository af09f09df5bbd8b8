"""The heat-sealing station served over Modbus TCP, or Modbus RTU on a serial port (`serial=`) or RTU
frames over TCP (`framer="rtu"`, a serial gateway) (pymodbus server, SimDevice datastore); the
register map is in `modbus_register_map.py`.

Fault injection (ModbusStationServer): `drop_connections()`, `stop()`/`start()`/`restart()` on the
same port, `freeze(name, value)`, `fail_range(table, address, count, code)` (Modbus exception),
`set_delay(seconds)` (slow PLC), `short_responses(missing)` (malformed answers).

Values are taken from the model on every request (the model is moved to the server's clock
first), so one request is one consistent snapshot; the whole station area of the holding
registers fits in one read. Given a `LeakTesterModel` (downstream of the same sealer model), the
server also answers as the leak tester on unit id 2 (`LEAK_TESTER_UNIT_ID`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import structlog
from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.pdu import ExceptionResponse
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice

from .leak_tester import DECAY_LIMITS, TEST_PRESSURE_LIMITS, LeakState, LeakTesterModel
from .modbus_register_map import (
    BITS_SIZE,
    BULK_ADDRESS,
    BULK_COUNT,
    HOLDING_SIZE,
    INPUT_SIZE,
    KNOWN_REGISTERS,
    LEAK_TESTER_SIZE,
    LEAK_TESTER_UNIT_ID,
)
from .served import ServedStation
from .station import (
    DWELL_LIMITS,
    PRESSURE_LIMITS,
    TEMPERATURE_LIMITS,
    State,
    StationModel,
    StationSnapshot,
)

log = structlog.get_logger("linetap.simulators.modbus")

FC_TABLE = {1: "coil", 2: "discrete", 3: "holding", 4: "input", 5: "coil", 15: "coil", 6: "holding",
            16: "holding", 22: "holding", 23: "holding"}

_STATION_STRUCT = struct.Struct(">fffIHH20s16sfI6f16s")
_STATION_REGS = _STATION_STRUCT.size // 2
_STATION_WORDS = struct.Struct(f">{_STATION_REGS}H")
_LEAK_STRUCT = struct.Struct(">fffIHH20s16sHHI4f")
_LEAK_REGS = _LEAK_STRUCT.size // 2
_LEAK_WORDS = struct.Struct(f">{_LEAK_REGS}H")
_INPUT_STRUCT = struct.Struct(">hHHI")  # unit_count packed big-endian, then word-swapped below


class _SequentialRequestHandler(ServerRequestHandler):
    """One connection, answered like a PLC: one request at a time, each answer with its own id.

    pymodbus' handler reads `self.last_pdu` again after the datastore call; when a response is
    delayed (our slow-PLC fault) and the client sends its next request meanwhile, the late answer
    would carry the new request's transaction id. Here the request is captured first.
    """

    def __init__(self, owner: _StationTcpServer, *args: Any) -> None:
        super().__init__(owner, *args)
        self._serial = asyncio.Lock()

    def handle_later(self) -> None:
        pdu, addr = self.last_pdu, self.last_addr
        if pdu is None:
            return
        task = self.loop.create_task(self._answer(pdu, addr))
        self.server.tasks.add(task)
        task.add_done_callback(self.server.tasks.discard)

    async def _answer(self, pdu: Any, addr: Any) -> None:
        async with self._serial:
            try:
                response = await pdu.datastore_update(self.server.context, pdu.dev_id)
            except KeyError:  # no such unit id
                if isinstance(self.server, _StationSerialServer):
                    return  # on a serial bus nobody answers for an address that is not there
                response = ExceptionResponse(pdu.function_code, ExcCodes.GATEWAY_NO_RESPONSE)
            except Exception as err:  # a simulator bug must not kill the connection
                log.error("simulator request failed", error=repr(err))
                response = ExceptionResponse(pdu.function_code, ExcCodes.DEVICE_FAILURE)
            response.transaction_id = pdu.transaction_id
            response.dev_id = pdu.dev_id
            if self.transport:
                self.server_send(response, addr)


class _StationTcpServer(ModbusTcpServer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tasks: set[asyncio.Task] = set()

    def callback_new_connection(self) -> _SequentialRequestHandler:
        return _SequentialRequestHandler(self, self.trace_packet, self.trace_pdu, self.trace_connect)


class _StationSerialServer(ModbusSerialServer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tasks: set[asyncio.Task] = set()

    def callback_new_connection(self) -> _SequentialRequestHandler:
        return _SequentialRequestHandler(self, self.trace_packet, self.trace_pdu, self.trace_connect)


@dataclasses.dataclass(frozen=True)
class _Fault:
    table: str
    address: int
    count: int
    code: int


class ModbusStationServer(ServedStation):
    """Serves a `StationModel` over Modbus TCP, with fault injection for tests.

    `clock`: model seconds now (default: `speed` x seconds since the first `start()`); tests pass
    their own to move the model explicitly. `leak_tester`: a `LeakTesterModel` fed by `model`,
    served on unit id `leak_unit_id` (faults other than `set_delay` apply to the sealer only).
    `extra_unit_ids`: more unit ids answering as the same sealer (several devices on one bus).
    `serial`: a serial port path to serve Modbus RTU on instead of TCP (`baudrate`, `parity`,
    `stopbits`); `framer="rtu"`: RTU frames over TCP, as a serial gateway's TCP port.
    """

    def __init__(
        self,
        model: StationModel,
        host: str = "127.0.0.1",
        port: int = 0,
        unit_id: int = 1,
        *,
        clock: Callable[[], float] | None = None,
        speed: float = 1.0,
        leak_tester: LeakTesterModel | None = None,
        leak_unit_id: int = LEAK_TESTER_UNIT_ID,
        extra_unit_ids: tuple[int, ...] = (),
        serial: str | None = None,
        baudrate: int = 19200,
        parity: str = "E",
        stopbits: int = 1,
        framer: str = "socket",
    ) -> None:
        super().__init__(model, clock, speed)
        if set(extra_unit_ids) & {unit_id, leak_unit_id if leak_tester is not None else -1}:
            raise ValueError("every unit id needs a device of its own")
        if leak_tester is not None and leak_tester.sealer is not model:
            raise ValueError("the leak tester must be fed by the served sealer model")
        if leak_tester is not None and leak_unit_id == unit_id:
            raise ValueError("the leak tester needs a unit id of its own")
        self.host = host
        self.unit_id = unit_id
        self.leak_tester = leak_tester
        self.leak_unit_id = leak_unit_id
        self.leak_requests = 0
        self.extra_unit_ids = tuple(extra_unit_ids)
        self.serial = serial
        self._line = {"baudrate": baudrate, "parity": parity, "stopbits": stopbits, "bytesize": 8}
        self._framer = FramerType.RTU if serial is not None or framer == "rtu" else FramerType.SOCKET
        self._requested_port = port
        self._port: int | None = None
        self._server: _StationTcpServer | _StationSerialServer | None = None
        self._faults: list[_Fault] = []
        self._delay = 0.0
        self._frozen: dict[str, Any] = {}
        self._short = 0
        self.requests = 0  # requests answered from the datastore (a test counts reads with it)
        self.requests_by_table: dict[str, int] = {"holding": 0, "input": 0, "coil": 0, "discrete": 0}

    # --- life cycle ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (after start; port 0 picks a free one, kept across restarts)."""
        if self._port is None:
            raise RuntimeError("server not started")
        return self._port

    @property
    def running(self) -> bool:
        return self._server is not None

    def _devices(self) -> list[SimDevice]:
        sealers = [self._device(unit) for unit in (self.unit_id, *self.extra_unit_ids)]
        if self.leak_tester is None:
            return sealers
        blank = [SimData(address=0, values=[False] * 16, datatype=DataType.BITS)]
        leak = SimDevice(id=self.leak_unit_id, action=self._leak_action, simdata=(
            blank, blank, [SimData(address=0, values=[0] * LEAK_TESTER_SIZE, datatype=DataType.REGISTERS)],
            [SimData(address=0, values=[0] * 16, datatype=DataType.REGISTERS)]))
        return [*sealers, leak]

    def _device(self, unit_id: int) -> SimDevice:
        def block(table: str, size: int) -> list[SimData]:
            values = [0] * size
            for addr, word in KNOWN_REGISTERS[table].items():
                values[addr] = word
            out = [SimData(address=0, values=values, datatype=DataType.REGISTERS)]
            if table == "holding":
                out.append(SimData(address=BULK_ADDRESS, values=[0] * (2 * BULK_COUNT),
                                   datatype=DataType.REGISTERS))
            return out

        def bits(table: str) -> list[SimData]:
            values = [False] * BITS_SIZE
            for addr, bit in KNOWN_REGISTERS[table].items():
                values[addr] = bool(bit)
            return [SimData(address=0, values=values, datatype=DataType.BITS)]

        return SimDevice(
            id=unit_id,
            simdata=(bits("coil"), bits("discrete"), block("holding", HOLDING_SIZE), block("input", INPUT_SIZE)),
            action=self._action,
        )

    async def start(self) -> None:
        if self._server is not None:
            return
        if self.serial is not None:
            server: _StationTcpServer | _StationSerialServer = _StationSerialServer(
                self._devices(), port=self.serial, trace_pdu=self._trace_pdu, reconnect_delay=0, **self._line)
            await server.serve_forever(background=True)
            self._port = 0
        else:
            port = self._port if self._port is not None else self._requested_port
            server = _StationTcpServer(self._devices(), address=(self.host, port), trace_pdu=self._trace_pdu,
                                       framer=self._framer)
            await server.serve_forever(background=True)
            self._port = server.transport.sockets[0].getsockname()[1]
        self._server = server
        self._start_clock()
        log.info("modbus simulator listening", host=self.host, port=self._port, serial=self.serial,
                 unit_id=self.unit_id, extra_unit_ids=self.extra_unit_ids or None,
                 leak_tester_unit_id=self.leak_unit_id if self.leak_tester else None)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        listener = server.transport if isinstance(server, _StationTcpServer) else None
        for task in list(server.tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await server.shutdown()
        if listener is not None:
            with contextlib.suppress(Exception):
                await listener.wait_closed()
        await asyncio.sleep(0)  # let the transports finish closing


    # --- fault injection -------------------------------------------------------------------

    @property
    def connections(self) -> int:
        return len(self._server.active_connections) if self._server else 0

    def drop_connections(self) -> int:
        """Close every client connection (the listener stays up). Returns how many were closed."""
        if self._server is None:
            return 0
        conns = list(self._server.active_connections.values())
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()
        return len(conns)

    def fail_range(self, table: str, address: int, count: int = 1, code: int = 2) -> None:
        """Requests touching `table` [address, address+count) answer with Modbus exception `code`."""
        if table not in self.requests_by_table:
            raise ValueError(f"unknown table {table!r}")
        self._faults.append(_Fault(table, address, count, int(code)))

    def clear_faults(self) -> None:
        self._faults.clear()

    def set_delay(self, seconds: float) -> None:
        """Answer every request `seconds` late (a slow PLC); 0 restores normal answers."""
        self._delay = max(0.0, seconds)

    def short_responses(self, missing: int = 1) -> None:
        """Answer register reads with `missing` registers fewer than asked (a malformed answer);
        0 restores normal answers."""
        self._short = max(0, missing)

    def _trace_pdu(self, sending: bool, pdu: Any) -> Any:
        if sending and self._short and pdu.function_code in (3, 4) and len(pdu.registers) > self._short:
            pdu.registers = list(pdu.registers)[:-self._short]
            pdu.count = len(pdu.registers)
        return pdu

    def freeze(self, name: str, value: Any = None) -> None:
        """Serve station value `name` (a StationSnapshot field) fixed at `value` (default: now's)."""
        if name not in {f.name for f in dataclasses.fields(StationSnapshot)}:
            raise ValueError(f"unknown station value {name!r}")
        if value is None:
            value = getattr(self.snapshot(), name)
        self._frozen[name] = value

    def unfreeze(self, name: str | None = None) -> None:
        if name is None:
            self._frozen.clear()
        else:
            self._frozen.pop(name, None)

    # --- serving ---------------------------------------------------------------------------

    def snapshot(self) -> StationSnapshot:
        """Move the model to now and return what is served (with frozen values applied)."""
        snap = self.model.step(self.model_time())
        if self._frozen:
            snap = dataclasses.replace(snap, **self._frozen)
        return snap

    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      registers: list[int], set_values: Any) -> ExcCodes | None:
        if self._delay:
            await asyncio.sleep(self._delay)
        table = FC_TABLE.get(function_code, "holding")
        if table in ("coil", "discrete"):  # start_address and count are in 16-bit words here
            lo, hi = address, (address // 16 + count) * 16
        else:
            lo, hi = address, address + count
        for fault in self._faults:
            if fault.table == table and fault.address < hi and lo < fault.address + fault.count:
                return ExcCodes(fault.code)
        self.requests += 1
        self.requests_by_table[table] += 1
        if set_values is not None:
            return None
        snap = self.snapshot()
        if table == "holding":
            if start_address <= 0 and address < _STATION_REGS:
                words = _STATION_WORDS.unpack(self._station_bytes(snap))
                registers[-start_address:-start_address + _STATION_REGS] = words
            if address + count > BULK_ADDRESS and address < BULK_ADDRESS + 2 * BULK_COUNT:
                self._fill_bulk(snap.time, registers, start_address, address, count)
        elif table == "input":
            if start_address <= 0 and address < 5:
                raw = _INPUT_STRUCT.pack(
                    _clamp(round(snap.temperature * 10), -32768, 32767),
                    _clamp(round(snap.pressure * 100), 0, 65535),
                    _clamp(round(snap.dwell * 1000), 0, 65535),
                    snap.unit_count & 0xFFFFFFFF,
                )
                w = struct.unpack(">5H", raw)
                registers[-start_address:-start_address + 5] = [w[0], w[1], w[2], w[4], w[3]]
        elif table == "coil":
            if start_address <= 0 and address < 16:
                registers[-start_address] = (registers[-start_address] & ~1) | int(snap.cycle_active)
        elif table == "discrete" and start_address <= 0 and address < 16:
            bits = (int(snap.cycle_active) | int(snap.state is State.RAMP) << 1
                    | int(snap.state is State.HOLD) << 2 | int(snap.state is State.IDLE) << 3)
            registers[-start_address] = (registers[-start_address] & ~0xF) | bits
        return None

    async def _leak_action(self, function_code: int, start_address: int, address: int, count: int,
                           registers: list[int], set_values: Any) -> ExcCodes | None:
        if self._delay:
            await asyncio.sleep(self._delay)
        self.leak_requests += 1
        if set_values is None and FC_TABLE.get(function_code) == "holding" and start_address <= 0 \
                and address < _LEAK_REGS:
            snap = self.leak_tester.step(self.model_time())
            status = (int(snap.cycle_active) | int(snap.state is LeakState.FILL) << 1
                      | int(snap.state is LeakState.MEASURE) << 2)
            raw = _LEAK_STRUCT.pack(
                snap.pressure, snap.test_pressure, snap.pressure_decay, snap.unit_count & 0xFFFFFFFF, status,
                int(snap.state), snap.serial.encode("utf-8")[:20], snap.operator.encode("utf-8")[:16], snap.result,
                0, snap.rejects & 0xFFFFFFFF, TEST_PRESSURE_LIMITS.low, TEST_PRESSURE_LIMITS.high,
                DECAY_LIMITS.low, DECAY_LIMITS.high)
            registers[-start_address:-start_address + _LEAK_REGS] = _LEAK_WORDS.unpack(raw)
        return None

    @staticmethod
    def _fill_bulk(t: float, registers: list[int], start_address: int, address: int, count: int) -> None:
        lo = max(address, BULK_ADDRESS) - BULK_ADDRESS
        hi = min(address + count, BULK_ADDRESS + 2 * BULK_COUNT) - BULK_ADDRESS
        first, last = lo // 2, (hi + 1) // 2  # whole float32 values
        idx = np.arange(first, last, dtype=np.float64)
        words = (idx + np.sin(t + idx / 10)).astype(">f4").view(">u2").tolist()
        at = BULK_ADDRESS + 2 * first - start_address
        registers[at:at + len(words)] = words

    @staticmethod
    def _station_bytes(snap: StationSnapshot) -> bytes:
        status = int(snap.cycle_active) | int(snap.state is State.RAMP) << 1 | int(snap.state is State.HOLD) << 2
        return _STATION_STRUCT.pack(
            snap.temperature, snap.pressure, snap.dwell, snap.unit_count & 0xFFFFFFFF, status, int(snap.state),
            snap.serial.encode("utf-8")[:20], snap.operator.encode("utf-8")[:16], snap.setpoint,
            snap.rejects & 0xFFFFFFFF,
            TEMPERATURE_LIMITS.low, TEMPERATURE_LIMITS.high, PRESSURE_LIMITS.low, PRESSURE_LIMITS.high,
            DWELL_LIMITS.low, DWELL_LIMITS.high, snap.film_lot.encode("utf-8")[:16],
        )


def _line_text(line: dict | None) -> str:
    line = {"baudrate": 19200, "parity": "E", "stopbits": 1, **(line or {})}
    return f"{line['baudrate']} 8{line['parity']}{line['stopbits']}"


def _clamp(v: int, lo: int, hi: int) -> int:
    return lo if v < lo else hi if v > hi else v


async def serve_modbus(
    host: str = "127.0.0.1",
    port: int = 5020,
    *,
    cycle_time: float = 2.0,
    out_of_limit_share: float = 0.1,
    seed: int = 1,
    unit_id: int = 1,
    speed: float = 1.0,
    stop: asyncio.Event | None = None,
    leak_tester: bool = True,
    serial: str | None = None,
    line: dict | None = None,
) -> None:
    """Serve a heat-sealing station (unit id `unit_id`) and the leak tester downstream of it (unit id
    2, unless `leak_tester` is false) until `stop` is set (or forever): `linetap simulate modbus`."""
    model = StationModel(seed=seed, cycle_time=cycle_time, out_of_limit_share=out_of_limit_share,
                         keep_units=10_000)
    tester = LeakTesterModel(model, seed=seed, keep_units=10_000) if leak_tester else None
    leak_unit_id = LEAK_TESTER_UNIT_ID if unit_id != LEAK_TESTER_UNIT_ID else LEAK_TESTER_UNIT_ID + 1
    server = ModbusStationServer(model, host=host, port=port, unit_id=unit_id, speed=speed, leak_tester=tester,
                                 leak_unit_id=leak_unit_id, serial=serial, **(line or {}))
    await server.start()
    where = f"{serial} (RTU {_line_text(line)})" if serial else f"{host}:{server.port}"
    log.info("heat-sealer simulator running", endpoint=where, unit_id=unit_id,
             leak_tester_unit_id=leak_unit_id if tester else None,
             cycle_time=cycle_time, out_of_limit_share=out_of_limit_share, seed=seed)
    try:
        if stop is None:
            await asyncio.Event().wait()
        else:
            await stop.wait()
    finally:
        await server.stop()
