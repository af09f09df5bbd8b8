"""The MES side's settings file: `linetap sink --config mes-sink.yaml`.

    mqtt:
      host: mes-broker.plant.local
      port: 8883
      username: mes-sink
      password_file: /etc/linetap/sink.pw     # or password: ${LINETAP_SINK_PASSWORD}
      tls: {ca_file: plant-ca.pem}            # the agent's `mqtt.tls` block: ca_file, cert_file, key_file, ...
      client_id: mes-sink-1                   # one per process; `--client-id` overrides it
    db: postgresql://linetap@mes-db.plant.local/mes
    share: mes
    topic: "acme/#"

The same loader as a line config: FILE:LINE errors, `${VAR}` substitution, no literal passwords,
relative paths against the file's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, SecretStr, model_validator

from .issues import At
from .models import Strict, TLSConfig
from .secrets import secret_value
from .units import Duration


def topic_filter_problem(topic: str) -> str | None:
    """What is wrong with an MQTT topic filter (wildcards only as whole levels, `#` last), or None."""
    levels = topic.split("/")
    if not topic or any(("#" in lv or "+" in lv) and lv not in ("#", "+") for lv in levels) or "#" in levels[:-1]:
        return f"{topic!r} is not an MQTT topic filter (e.g. acme/cork/# or #)"
    return None


class SinkMQTT(Strict):
    host: str = Field(min_length=1)
    port: int = Field(1883, ge=1, le=65535)
    client_id: str | None = Field(None, description="stable across restarts, one per sink process "
                                                    "(default: linetap-sink-<hostname>)")
    username: str | None = None
    password: SecretStr | None = Field(None, description="use ${ENV_VAR}, never a literal secret")
    password_file: Path | None = Field(None, description="file whose first line is the password")
    tls: TLSConfig | None = None
    session_expiry: Duration = Field(7 * 86400.0, ge=0, description="how long the broker keeps the session "
                                                                      "(and queues for it) while the sink is down")

    @model_validator(mode="after")
    def _credentials(self) -> Self:
        if self.password is not None and self.password_file is not None:
            raise At(("password_file",), "give password or password_file, not both")
        if (self.password is not None or self.password_file is not None) and self.username is None:
            raise At(("username",), "a password needs a username")
        return self

    def password_value(self) -> str | None:
        return secret_value(self.password, self.password_file)


class SinkConfig(Strict):
    mqtt: SinkMQTT
    db: str = Field(min_length=1, description="postgresql://USER@HOST:PORT/DB, or a DuckDB file")
    topic: str = Field("#", description="topic filter; payloads are recognised by their linetap schema")
    share: str | None = Field(None, pattern=r"^[^/+#\s]+$", description="shared subscription group")
    allow_literal_secrets: bool = False

    @model_validator(mode="after")
    def _filter(self) -> Self:
        if (problem := topic_filter_problem(self.topic)) is not None:
            raise At(("topic",), problem)
        return self

    def resolve_paths(self, base: Path) -> SinkConfig:
        """Relative files (and a relative DuckDB file) are relative to the config file's folder."""
        def fix(p: Path | None) -> Path | None:
            return p if p is None or p.is_absolute() else base / p

        m = self.mqtt.model_copy(update={"password_file": fix(self.mqtt.password_file)})
        if m.tls is not None:
            m = m.model_copy(update={"tls": m.tls.model_copy(update={
                k: fix(getattr(m.tls, k)) for k in ("ca_file", "cert_file", "key_file", "key_password_file")})})
        db = self.db if "://" in self.db or Path(self.db).is_absolute() else str(base / self.db)
        return self.model_copy(update={"mqtt": m, "db": db})
