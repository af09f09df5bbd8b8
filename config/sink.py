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
    replay_after: 60s                         # ask the agent for a hole no gap event covers after this long

The same loader as a line config: FILE:LINE errors, `${VAR}` substitution, no literal passwords,
relative paths against the file's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, model_validator

from .issues import At
from .models import TOPIC_LEVEL, BrokerLogin, Strict
from .units import Duration


def topic_filter_problem(topic: str) -> str | None:
    """What is wrong with an MQTT topic filter (wildcards only as whole levels, `#` last), or None."""
    levels = topic.split("/")
    if not topic or any(("#" in lv or "+" in lv) and lv not in ("#", "+") for lv in levels) or "#" in levels[:-1]:
        return f"{topic!r} is not an MQTT topic filter (e.g. acme/cork/# or #)"
    return None


class SinkMQTT(BrokerLogin):
    host: str = Field(min_length=1)
    session_expiry: Duration = Field(7 * 86400.0, ge=0, description="how long the broker keeps the session "
                                                                      "(and queues for it) while the sink is down")

    @model_validator(mode="after")
    def _user(self) -> Self:
        if (self.password is not None or self.password_file is not None) and self.username is None:
            raise At(("username",), "a password needs a username")
        return self


class SinkConfig(Strict):
    mqtt: SinkMQTT
    db: str = Field(min_length=1, description="postgresql://USER@HOST:PORT/DB, or a DuckDB file")
    topic: str = Field("#", description="topic filter; payloads are recognised by their linetap schema")
    share: str | None = Field(None, pattern=TOPIC_LEVEL, description="shared subscription group")
    replay_after: Duration = Field(60.0, ge=0, description="how long a hole no gap event covers stays open before "
                                                           "the agent is asked to re-send it (0: never ask)")
    replay_attempts: int = Field(6, ge=1, description="requests for one range before it is recorded as unrecovered")
    allow_literal_secrets: bool = False

    @model_validator(mode="after")
    def _filter(self) -> Self:
        if (problem := topic_filter_problem(self.topic)) is not None:
            raise At(("topic",), problem)
        return self

    def resolve_paths(self, base: Path) -> SinkConfig:
        """Relative files (and a relative DuckDB file) are relative to the config file's folder."""
        m = self.mqtt.resolve_paths(base)
        db = self.db if "://" in self.db or Path(self.db).is_absolute() else str(base / self.db)
        return self.model_copy(update={"mqtt": m, "db": db})
