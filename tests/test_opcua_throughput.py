"""How many notifications per second one OpcUaDriver takes in (simulator in its own process).

As a test: a short, loose check. As a script, the measurement for the report:

    .venv/bin/python tests/test_opcua_throughput.py --items 2000 --interval 0.2 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time

import pytest

from linetap.config.devices.opcua import OpcUaDeviceConfig
from linetap.drivers.opcua import OpcUaDriver
from linetap.simulators.net import free_port
from linetap.simulators.opcua_address_space import NAMESPACE_URI


def _start_simulator(port: int, items: int, interval: float) -> subprocess.Popen:
    code = ("import asyncio; from linetap.simulators.opcua_server import serve_opcua; "
            f"asyncio.run(serve_opcua('127.0.0.1', {port}, bulk_count={items}, bulk_interval={interval}))")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def measure(items: int, interval: float, seconds: float, publishing: float = 0.1) -> dict[str, float]:
    port = free_port()
    proc = _start_simulator(port, items, interval)
    try:
        cfg = OpcUaDeviceConfig.model_validate({
            "protocol": "opcua", "name": "bulk", "endpoint": f"opc.tcp://127.0.0.1:{port}", "read_units": False,
            "publishing_interval": publishing, "queue_size": 1, "timeout": "5s",
            "tags": [{"name": f"b{i:05d}", "node": f"nsu={NAMESPACE_URI};s=Bulk.B{i:05d}"} for i in range(items)]})
        driver = OpcUaDriver(cfg)
        deadline = time.monotonic() + 30
        while True:
            try:
                await driver.connect()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.3)
        samples = batches = 0
        warmup_until = time.monotonic() + 2.0
        t0 = cpu0 = None
        async for batch in driver.samples():
            now = time.monotonic()
            if now < warmup_until:
                continue
            if t0 is None:
                t0, cpu0 = now, time.process_time()
                continue
            samples += len(batch)
            batches += 1
            if now - t0 >= seconds:
                break
        wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
        await driver.close()
        return {"items": items, "offered_per_s": items / interval, "notifications_per_s": samples / wall,
                "batches_per_s": batches / wall, "cpu_share": cpu / wall,
                "cpu_us_per_notification": 1e6 * cpu / max(samples, 1)}
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.timeout(90)
async def test_one_driver_keeps_up_with_a_thousand_changing_items():
    result = await measure(items=1000, interval=0.5, seconds=3.0)
    # Behaviour, not speed (speed is reported by the script mode): changes keep flowing for the
    # whole window, and they arrive batched per publish (publishing interval 100 ms), not one by one.
    assert result["notifications_per_s"] * 3.0 >= 1000, result
    assert result["batches_per_s"] < 30, "notifications arrive batched per publish, not one by one"


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--items", type=int, default=2000)
    p.add_argument("--interval", type=float, default=0.2, help="seconds between value changes of every item")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--publishing", type=float, default=0.1)
    a = p.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    r = asyncio.run(measure(a.items, a.interval, a.seconds, a.publishing))
    print(" ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
