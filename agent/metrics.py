"""Prometheus metrics of the running agent: `metrics: {listen: 127.0.0.1:9464}` serves `/metrics`.

Counters that move with the data (polls, samples by quality, unit records by verdict) are
incremented per batch (a few µs a poll, never per sample); everything else is read when
Prometheus scrapes, from what the agent keeps anyway: device states, the forwarder's counters,
and the buffer figures its housekeeping writes to the status file every 2 s (depth, oldest
unsent, seqs, gap events). The HTTP server is prometheus-client's, on a thread of its own: a
slow scraper never holds the event loop. A port that cannot be bound is logged loudly and the
agent runs on without metrics (collection never stops for monitoring).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, Info, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily

from linetap.drivers.samples import Quality

log = structlog.get_logger("linetap.agent")

__all__ = ["AgentMetrics", "NoMetrics", "open_metrics"]

QUALITIES = [q.name.lower() for q in Quality]
POLL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class NoMetrics:
    """`metrics.listen` not set: every hook does nothing."""

    snapshot: dict[str, Any] | None = None

    def batch(self, device: str, batch: Any, driver: Any) -> None: ...

    def device_state(self, device: str, state: str) -> None: ...

    def captured(self, units: list[dict[str, Any]], events: list[Any]) -> None: ...

    def reconfigured(self, config_version: str) -> None: ...

    def serve(self) -> None: ...

    def close(self) -> None: ...


class AgentMetrics(NoMetrics):
    def __init__(self, config: Any, agent: Any, config_version: str) -> None:
        self.config = config
        self.agent = agent  # reads agent.stats, agent.forwarder at scrape time
        self.snapshot = None  # the status file's document, refreshed by the housekeeping
        self.registry = r = CollectorRegistry()
        self.polls = Counter("linetap_device_polls", "reads (polls or notification batches) of a device",
                             ["device"], registry=r)
        self.poll_seconds = Histogram("linetap_device_poll_duration_seconds", "time one poll of a device took",
                                      ["device"], buckets=POLL_BUCKETS, registry=r)
        self.samples = Counter("linetap_device_samples", "samples read, by quality", ["device", "quality"],
                               registry=r)
        self.reconnects = Counter("linetap_device_reconnects", "times a lost device was reached again",
                                  ["device"], registry=r)
        self.units = Counter("linetap_unit_records", "unit records (eDHR) made, by station and verdict",
                             ["station", "verdict"], registry=r)
        self.nonconformances = Counter("linetap_nonconformances", "non-conformance events raised, by station",
                                       ["station"], registry=r)
        self.info = Info("linetap_config", "the running configuration", registry=r)
        self.reconfigured(config_version)
        self.last_success: dict[str, float] = {}
        for d in config.devices:  # every series exists from the start (0, not absent)
            self.polls.labels(d.name)
            self.reconnects.labels(d.name)
            for q in QUALITIES:
                self.samples.labels(d.name, q)
        r.register(_Live(self))
        self._server: Any = None

    # -- hooks on the agent's path (event loop) ---------------------------------------------

    def batch(self, device: str, batch: Any, driver: Any) -> None:
        self.polls.labels(device).inc()
        seconds, driver.read_seconds = driver.read_seconds, None  # a notification batch has no read of its own
        if seconds is not None:
            self.poll_seconds.labels(device).observe(seconds)
        counts = np.bincount(np.asarray(batch.quality, dtype=np.intp), minlength=len(QUALITIES))
        for q, n in zip(QUALITIES, counts.tolist(), strict=False):
            if n:
                self.samples.labels(device, q).inc(n)
        if counts[Quality.GOOD]:
            self.last_success[device] = batch.agent_ts / 1e6

    def device_state(self, device: str, state: str) -> None:
        if state == "recovered":
            self.reconnects.labels(device).inc()

    def captured(self, units: list[dict[str, Any]], events: list[Any]) -> None:
        for u in units:  # unit record bodies (station_capture)
            self.units.labels(u.get("station") or "", u.get("verdict") or "").inc()
        for e in events:
            if e.kind == "nonconformance":
                self.nonconformances.labels(e.station or "").inc()

    def reconfigured(self, config_version: str) -> None:
        self.info.info({"agent": self.config.agent.id, "config_version": config_version})

    # -- the HTTP endpoint ------------------------------------------------------------------

    def serve(self) -> None:
        host, port = self.config.metrics.address
        try:
            self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as err:
            log.error("metrics endpoint not started: the agent runs on without it", listen=self.config.metrics.listen,
                      error=err.strerror or str(err), fix="free the port or change metrics.listen")
            return
        log.info("metrics endpoint listening", url=f"http://{self.config.metrics.listen}/metrics")

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _Live:
    """What is read at scrape time (prometheus-client's HTTP thread)."""

    def __init__(self, m: AgentMetrics) -> None:
        self.m = m

    def describe(self):
        return []

    def collect(self):
        m, agent = self.m, self.m.agent
        up = GaugeMetricFamily("linetap_device_up", "1 while the device answers, 0 while it is lost or starting",
                               labels=["device"])
        last = GaugeMetricFamily("linetap_device_last_success_timestamp_seconds",
                                 "when the device last gave a good sample (Unix time)", labels=["device"])
        for name, status in agent.stats.devices.items():
            if status.state == "removed":
                continue
            up.add_metric([name], 1.0 if status.state == "connected" else 0.0)
            if name in m.last_success:
                last.add_metric([name], m.last_success[name])
        yield up
        yield last
        yield from _forwarder(agent.forwarder.stats if agent.forwarder is not None else None)
        yield from _buffer(m.snapshot, Path(m.config.buffer.path))


def _forwarder(stats: Any):
    connected = GaugeMetricFamily("linetap_mqtt_connected", "1 while the broker connection is up")
    inflight = GaugeMetricFamily("linetap_mqtt_inflight_messages", "messages sent and not yet acknowledged")
    published = CounterMetricFamily("linetap_mqtt_published_messages", "messages published (re-sends included)")
    resent = CounterMetricFamily("linetap_mqtt_resent_messages", "messages re-sent after a reconnect")
    samples = CounterMetricFamily("linetap_mqtt_published_samples", "telemetry samples in the published messages")
    reconnects = CounterMetricFamily("linetap_mqtt_reconnects", "connections to the broker after the first")
    puback = SummaryMetricFamily("linetap_mqtt_puback_latency_seconds", "publish to PUBACK")
    if stats is not None:
        connected.add_metric([], 1.0 if stats.connected else 0.0)
        inflight.add_metric([], stats.inflight)
        published.add_metric([], stats.messages_sent)
        resent.add_metric([], stats.resent)
        samples.add_metric([], stats.samples_sent)
        reconnects.add_metric([], stats.reconnects)
        puback.add_metric([], count_value=stats.pubacks, sum_value=stats.puback_seconds)
    yield from (connected, inflight, published, resent, samples, reconnects, puback)


def _buffer(snapshot: dict[str, Any] | None, path: Path):
    depth = GaugeMetricFamily("linetap_buffer_pending_records", "rows not yet acknowledged by the broker",
                              labels=["stream"])
    oldest = GaugeMetricFamily("linetap_buffer_oldest_unsent_age_seconds", "age of the oldest unsent row",
                               labels=["stream"])
    last_seq = GaugeMetricFamily("linetap_stream_last_seq", "the last seq written", labels=["stream"])
    acked = GaugeMetricFamily("linetap_stream_acked_seq", "the broker-acknowledged seq (the cursor)",
                              labels=["stream"])
    gaps = GaugeMetricFamily("linetap_gap_events", "gap events in the buffer (telemetry the agent dropped)")
    dropped = GaugeMetricFamily("linetap_gap_samples", "telemetry samples the kept gap events name as dropped")
    if snapshot is not None:
        now = time.time()
        for s in snapshot.get("streams", []):
            depth.add_metric([s["stream"]], s["pending"])
            last_seq.add_metric([s["stream"]], s["last_seq"])
            acked.add_metric([s["stream"]], s["cursor"])
            age = 0.0 if s["oldest_pending_at"] is None else max(now - s["oldest_pending_at"] / 1e6, 0.0)
            oldest.add_metric([s["stream"]], age)
        n, samples = snapshot.get("gaps", (0, 0))
        gaps.add_metric([], n)
        dropped.add_metric([], samples)
    files = GaugeMetricFamily("linetap_buffer_file_bytes", "size of the buffer's files", labels=["file"])
    records = path.with_name(path.name + ".records")
    for f in (path, path.with_name(path.name + ".wal"), records, records.with_name(records.name + ".wal")):
        try:
            files.add_metric([f.name], f.stat().st_size)
        except OSError:
            continue
    free = GaugeMetricFamily("linetap_buffer_disk_free_bytes", "free space on the buffer's file system")
    try:
        free.add_metric([], shutil.disk_usage(path.parent).free)
    except OSError:
        pass
    yield from (depth, oldest, last_seq, acked, gaps, dropped, files, free)


def open_metrics(config: Any, agent: Any, config_version: str) -> NoMetrics:
    return AgentMetrics(config, agent, config_version) if config.metrics.listen else NoMetrics()
