"""`python -m benchmarks.sink_publish HOST PORT FILE`: the sink benchmark's publisher (its own process).

Reads pre-built messages (`write_messages`), says `{"ready": n}` on stdout, waits for a line on
stdin, then publishes them all at QoS 1 as fast as the broker acknowledges them, with its own
window of messages in flight (paho refuses more than 65,535 outstanding, MEASURED.md) and every
return code checked; prints `{"published": n, "seconds": s}` when the last PUBACK is in.
"""

from __future__ import annotations

import json
import struct
import sys
import threading
import time
from pathlib import Path

WINDOW = 1000


def write_messages(path: Path, messages: list[tuple[str, bytes]]) -> int:
    with open(path, "wb") as f:
        for topic, payload in messages:
            t = topic.encode()
            f.write(struct.pack("<II", len(t), len(payload)) + t + payload)
    return len(messages)


def read_messages(path: Path) -> list[tuple[str, bytes]]:
    data = Path(path).read_bytes()
    out, i = [], 0
    while i < len(data):
        lt, lp = struct.unpack_from("<II", data, i)
        i += 8
        out.append((data[i:i + lt].decode(), data[i + lt:i + lt + lp]))
        i += lt + lp
    return out


def main(argv: list[str]) -> int:
    import paho.mqtt.client as mqtt

    host, port, path = argv[0], int(argv[1]), Path(argv[2])
    messages = read_messages(path)
    acked = threading.Semaphore(0)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sink-bench-publisher")
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    client.on_publish = lambda *a: acked.release()
    client.connect(host, port, keepalive=60)
    client.loop_start()
    print(json.dumps({"ready": len(messages)}), flush=True)
    sys.stdin.readline()
    t0, c0 = time.monotonic(), time.process_time()
    out = 0
    for topic, payload in messages:
        if out >= WINDOW:
            acked.acquire()
            out -= 1
        info = client.publish(topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            print(json.dumps({"error": f"publish rc {info.rc}"}), flush=True)
            return 1
        out += 1
    while out:
        if not acked.acquire(timeout=60):
            print(json.dumps({"error": f"{out} PUBACKs missing after 60 s"}), flush=True)
            return 1
        out -= 1
    print(json.dumps({"published": len(messages), "seconds": time.monotonic() - t0,
                      "cpu_s": time.process_time() - c0}), flush=True)
    client.disconnect()
    client.loop_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
