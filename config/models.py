"""The configuration of one production line (one agent), as pydantic models.

Every model forbids unknown keys, so a typo is an error rather than a silently ignored
setting. `linetap.config.loader` reads YAML into these and maps errors to file:line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from .capture import StationCapture
from .devices import DeviceConfig
from .devices.modbus import check_serial_buses
from .issues import At, unique_names
from .secrets import secret_value
from .units import ByteSize, Duration

# One ISA-95 level of a topic: no MQTT wildcards or separators.
TOPIC_LEVEL = r"^[^/#+\s]+$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AgentConfig(Strict):
    """Who this agent is and where it sits in the plant (ISA-95)."""

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$",
                    description="agent id, unique in the plant; part of every record id")
    enterprise: str = Field(pattern=TOPIC_LEVEL)
    site: str = Field(pattern=TOPIC_LEVEL)
    area: str = Field(pattern=TOPIC_LEVEL)
    line: str = Field(pattern=TOPIC_LEVEL)


class TLSConfig(Strict):
    ca_file: Path | None = Field(None, description="CA bundle that signed the broker's certificate")
    cert_file: Path | None = Field(None, description="client certificate (PEM), for certificate auth")
    key_file: Path | None = Field(None, description="client private key (PEM), encrypted or not")
    key_password: SecretStr | None = Field(None, description="password of an encrypted key_file: use ${ENV_VAR}")
    key_password_file: Path | None = Field(None, description="file whose first line is the key_file's password")
    insecure: bool = Field(False, description="skip hostname verification (testing only)")

    @model_validator(mode="after")
    def _pair(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if self.key_password is not None and self.key_password_file is not None:
            raise At(("key_password_file",), "give key_password or key_password_file, not both")
        if (self.key_password is not None or self.key_password_file is not None) and self.key_file is None:
            raise At(("key_password" if self.key_password is not None else "key_password_file",),
                     "a key password needs `key_file` (and `cert_file`)")
        return self


class BrokerLogin(Strict):
    """Where a broker is and how to log in to it: the agent's `mqtt:` block and the sink's
    (`config.sink`) both start with these."""

    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    client_id: str | None = Field(None, description="defaults to linetap-<agent id> (the sink: "
                                                    "linetap-sink-<hostname>); one per process")
    username: str | None = None
    password: SecretStr | None = Field(None, description="use ${ENV_VAR}, never a literal secret")
    password_file: Path | None = Field(None, description="file whose first line is the password")
    tls: TLSConfig | None = None

    @model_validator(mode="after")
    def _one_password(self) -> Self:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        return self

    def password_value(self) -> str | None:
        """The password (from `password` or the first line of `password_file`); None when not configured.
        Raises linetap.config.secrets.FileProblem when password_file cannot be used."""
        return secret_value(self.password, self.password_file)

    def resolve_paths(self, base: Path) -> Self:
        """Relative files (the password file, the TLS files) are relative to the config file's folder."""
        def fix(p: Path | None) -> Path | None:
            return p if p is None or p.is_absolute() else base / p

        tls = self.tls if self.tls is None else self.tls.model_copy(update={
            k: fix(getattr(self.tls, k)) for k in ("ca_file", "cert_file", "key_file", "key_password_file")})
        return self.model_copy(update={"password_file": fix(self.password_file), "tls": tls})


class MQTTConfig(BrokerLogin):
    """The plant broker the agent forwards to."""

    url: str | None = Field(None, description="mqtt://host:port or mqtts://host:port (sets host, port, tls)")
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    qos: Literal[1] = Field(1, description="QoS 1: at least once (the only mode that keeps the guarantee)")
    topic_root: str | None = Field(None, description="defaults to enterprise/site/area/line")
    keepalive: Duration = 30.0
    max_inflight: int = Field(32, ge=1, le=1000, description="unacknowledged messages at once")
    telemetry_batch: int = Field(500, ge=1, le=100_000, description="samples per telemetry message at most")
    payload: Literal["json"] = Field("json", description="payload encoder (linetap.agent.encoders.ENCODERS): "
                                     "json = the versioned JSON envelopes")
    reconnect_min: Duration = 0.5
    reconnect_max: Duration = 30.0

    @model_validator(mode="after")
    def _url(self) -> Self:
        if self.url is None:
            return self
        parsed = urlparse(self.url)
        if "@" in parsed.netloc:
            raise At(("url",), "the url must not hold a user name or password (user:password@host): put the user "
                     "in `username` and the password in `password: ${ENV_VAR}` or `password_file`")
        if parsed.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parsed.hostname:
            shown = self.url.split("@")[-1]  # never echo user:password@
            raise ValueError(f"url {shown!r}: expected mqtt://host:port or mqtts://host:port")
        secure = parsed.scheme in ("mqtts", "ssl")
        object.__setattr__(self, "host", parsed.hostname)
        object.__setattr__(self, "port", parsed.port or (8883 if secure else 1883))
        if secure and self.tls is None:
            object.__setattr__(self, "tls", TLSConfig())
        return self


class BufferConfig(Strict):
    """The local store-and-forward buffer (DuckDB)."""

    path: Path = Field(Path("linetap-buffer.duckdb"), description="relative paths are relative to the config file; "
                       "events and unit records are kept beside it in <path>.records")
    max_size: ByteSize = Field(2 * 10**9, description="size cap of the buffer file, e.g. 2GB")
    retention: Duration = Field(7 * 86400.0, description="how long delivered records are kept locally, e.g. 7d")
    flush_interval: Duration = Field(0.2, gt=0, description="samples are committed at least this often")
    memory_limit: ByteSize = Field(
        16 * 2**20, ge=16 * 2**20,
        description="DuckDB's cache of the buffer file, at least 16MiB; its default (80% of RAM) lets the agent's "
                    "memory grow with the file. More only speeds up reading a large backlog, e.g. 64MiB")
    hold_samples: int = Field(
        500_000, ge=100, le=50_000_000,
        description="while the buffer cannot be written (disk full, read-only folder), telemetry samples held in "
                    "memory (~100 bytes each); beyond this the oldest are dropped, each drop a gap event. Events and "
                    "unit records are always held")


class LoggingConfig(Strict):
    format: Literal["auto", "console", "json"] = Field(
        "auto", description="auto: readable on a terminal, JSON lines otherwise")
    level: Literal["debug", "info", "warning", "error"] = "info"


class ReconnectConfig(Strict):
    """How the agent retries a device it lost: capped exponential backoff with jitter."""

    min: Duration = Field(1.0, gt=0, description="first retry after this long")
    max: Duration = Field(30.0, gt=0, description="retries never wait longer than this")


class MetricsConfig(Strict):
    """Prometheus metrics of the running agent (off unless `listen` is given)."""

    listen: str | None = Field(None, description="HOST:PORT to serve /metrics on, e.g. 127.0.0.1:9464 (keep it "
                                                 "on a management network: the endpoint has no login)")

    @model_validator(mode="after")
    def _listen(self) -> Self:
        if self.listen is not None:
            host, _, port = self.listen.rpartition(":")
            if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise At(("listen",), f"{self.listen!r}: write HOST:PORT, e.g. 127.0.0.1:9464 (0.0.0.0:9464 for "
                         "every interface)")
        return self

    @property
    def address(self) -> tuple[str, int] | None:
        if self.listen is None:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


class LineConfig(Strict):
    """One production line: one agent, its broker, its buffer and its devices."""

    agent: AgentConfig
    mqtt: MQTTConfig = MQTTConfig()
    buffer: BufferConfig = BufferConfig()
    logging: LoggingConfig = LoggingConfig()
    reconnect: ReconnectConfig = ReconnectConfig()
    metrics: MetricsConfig = MetricsConfig()
    devices: list[DeviceConfig] = Field(min_length=1, description="the equipment this agent reads")
    stations: list[StationCapture] = Field(default_factory=list,
                                           description="per-unit capture (eDHR records, non-conformance events)")
    allow_literal_secrets: bool = Field(
        False, description="allow passwords written in this file (testing only); otherwise secrets come from "
        "${ENV_VAR} or a password file")

    @model_validator(mode="after")
    def _unique_devices(self) -> Self:
        unique_names(self.devices, "devices", "device")
        check_serial_buses(self.devices)
        return self

    @model_validator(mode="after")
    def _stations_fit_devices(self) -> Self:
        devices = {d.name: d for d in self.devices}
        unique_names(self.stations, "stations", "station")
        for i, station in enumerate(self.stations):
            device = devices.get(station.device)
            if device is None:
                raise At(("stations", i, "device"), f"station {station.name!r}: no device named "
                         f"{station.device!r} (devices: {', '.join(devices)})")
            known = {t.name for t in device.tags}
            missing = sorted(station.tags() - known)
            if missing:
                where = next(loc for loc, tag in station.tag_refs() if tag in missing)
                raise At(("stations", i, *where), f"station {station.name!r}: device {device.name!r} has no tag "
                         f"{', '.join(repr(m) for m in missing)}")
        return self

    @property
    def topic_root(self) -> str:
        if self.mqtt.topic_root:
            return self.mqtt.topic_root.strip("/")
        a = self.agent
        return f"{a.enterprise}/{a.site}/{a.area}/{a.line}"

    def resolve_paths(self, base: Path) -> LineConfig:
        """Relative file paths in the config are relative to the config file's folder."""

        def fix(p: Path | None) -> Path | None:
            return p if p is None or p.is_absolute() else base / p

        mqtt = self.mqtt.resolve_paths(base)
        buffer = self.buffer.model_copy(update={"path": fix(self.buffer.path)})
        devices = [device.resolve_paths(base) for device in self.devices]
        return self.model_copy(update={"buffer": buffer, "mqtt": mqtt, "devices": devices})
