"""One way to make a paho client from the `mqtt:` config: protocol, credentials, TLS, window.

Used by the forwarder, `linetap replay` and the demo's MES stand-in, so a setting (a password file,
a CA, `insecure`) means the same everywhere. Connecting, callbacks and reconnecting stay with the
caller. (`linetap sink` is the MES side and has its own config.)
"""

from __future__ import annotations

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from linetap.config.models import MQTTConfig
from linetap.config.tls import client_context

CONNECT_TIMEOUT = 10.0  # s: TCP + TLS + CONNACK


def mqtt_client(m: MQTTConfig, client_id: str, *, window: int | None = None,
                reconnect_on_failure: bool = False) -> mqtt.Client:
    """A paho client (callback API 2) for the broker `m` names, not connected yet: clean session,
    MQTT 3.1.1 or 5, the user name and password (`password_value()`: a missing password file raises
    `FileProblem`), TLS with our own context (an encrypted key is decrypted with the configured
    password, never a prompt). `window`: at most that many unacknowledged QoS 1 messages, and no
    limit of paho's own on the queue behind them (the caller's window bounds it)."""
    v5 = m.protocol == "5"
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=None if v5 else True,
        protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        reconnect_on_failure=reconnect_on_failure,
    )
    client.connect_timeout = CONNECT_TIMEOUT
    if window is not None:
        client.max_inflight_messages_set(window)
        client.max_queued_messages_set(0)
    if m.username is not None:
        client.username_pw_set(m.username, m.password_value())
    if m.tls is not None:
        client.tls_set_context(client_context(m.tls))
        if m.tls.insecure:
            client.tls_insecure_set(True)
    return client
