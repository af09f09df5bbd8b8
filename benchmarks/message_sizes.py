"""Samples per telemetry message, by the old boundary rule (device, seq gap, bucket) and the
current one (+ a new agent_ts), over buffers laid out as the agent writes them.

    .venv/bin/python -m benchmarks.message_sizes

Each scenario is a line's devices (tags per poll, poll interval) committed as the telemetry writer
commits them (every flush interval, the polls in arrival order), read back in the forwarder's
20,000-row chunks (a backlog, i.e. under load). No processes, no broker: the boundaries alone.
"""

from __future__ import annotations

import numpy as np

from linetap.agent.encoders.json_envelope import message_spans

BATCH = 500  # mqtt.telemetry_batch default
FLUSH_MS = 200  # buffer.flush_interval default
SCENARIOS = {  # name: [(tags per poll, poll interval ms), ...] per device
    "benchmark 40k+nc (4 x 1000 bulk @ 100 ms, 4 x 12 station @ 20 ms)": [(1000, 100)] * 4 + [(12, 20)] * 4,
    "benchmark 160k (4 x 1000 @ 25 ms)": [(1000, 25)] * 4,
    "one heat sealer (12 tags @ 100 ms)": [(12, 100)],
    "one heat sealer, fast (12 tags @ 20 ms)": [(12, 20)],
    "opcua subscription (1 x 5000 items @ 100 ms)": [(5000, 100)],
    "many small devices (20 x 25 tags @ 50 ms)": [(25, 50)] * 20,
}


def layout(devices: list[tuple[int, int]], seconds: float = 20.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """seq, device code, agent_ts of every row, in commit order."""
    polls = []  # (time ms, device, tags)
    for d, (tags, interval) in enumerate(devices):
        polls += [(t, d, tags) for t in range(0, int(seconds * 1000), interval)]
    polls.sort()
    dev = np.concatenate([np.full(tags, d) for _t, d, tags in polls])
    ts = np.concatenate([np.full(tags, t * 1000 + d) for t, d, tags in polls])
    return np.arange(1, len(dev) + 1), dev, ts


def mean_size(seq, dev, ts, use_ts: bool, chunk: int = 20_000) -> float:
    sizes = []
    after = 0
    while after < len(seq):
        end = min((after + chunk) // BATCH * BATCH, len(seq))
        s = slice(after, end)
        sizes += [b - a for a, b in message_spans(seq[s], dev[s], BATCH, ts[s] if use_ts else None)]
        after = end
    return float(np.mean(sizes))


def main() -> None:
    print(f"samples per message (batch {BATCH}, backlog read in 20,000-row chunks)\n")
    print("| scenario | rows | old rule | + new agent_ts | ratio |")
    print("|---|---:|---:|---:|---:|")
    for name, devices in SCENARIOS.items():
        seq, dev, ts = layout(devices)
        old, new = mean_size(seq, dev, ts, False), mean_size(seq, dev, ts, True)
        print(f"| {name} | {len(seq):,} | {old:.1f} | {new:.1f} | {new / old:.2f} |")


if __name__ == "__main__":
    main()
