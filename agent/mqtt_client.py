"""One way to make a paho client from the `mqtt:` config: protocol, credentials, TLS, window.

Used by the forwarder, `linetap replay` and the demo's MES stand-in, so a setting (a password file,
a CA, `insecure`) means the same everywhere. Connecting, callbacks and reconnecting stay with the
caller. (`linetap sink` is the MES side and has its own config.)
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from linetap.config.models import MQTTConfig
from linetap.config.tls import client_context
from linetap.drivers.base import describe_os_error

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


class ConnectionLost(Exception):
    """The broker connection ended (the words say how); the caller reconnects."""


def describe_connection_error(exc: BaseException) -> str:
    if isinstance(exc, ConnectionLost):
        return str(exc) or "connection lost"
    if isinstance(exc, OSError | TimeoutError):
        return describe_os_error(exc, CONNECT_TIMEOUT, peer="broker")
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class SocketErrors:
    """Stands in for paho's logger (`client.logger`): paho logs the OSError of a failed socket
    read or write and then reports only "connection lost"; keep the error for the loss reason.
    One method call per paho log line, no formatting."""

    __slots__ = ("error",)

    def __init__(self) -> None:
        self.error: OSError | None = None

    def log(self, level: int, fmt: str, *args: Any) -> None:
        if level >= logging.ERROR:
            for arg in args:
                if isinstance(arg, OSError):
                    self.error = arg


def loss_reason(flags, rc, socket_error: OSError | None, keepalive: float) -> str:
    """Why paho's connection ended, in words (paho's network thread)."""
    name = getattr(rc, "getName", lambda: str(rc))()
    if getattr(flags, "is_disconnect_packet_from_server", False):
        return f"the broker disconnected the agent: {reason_words(rc)}"
    if name == "Keep alive timeout":
        return f"no answer from the broker within the keepalive ({keepalive:g}s)"
    if name == "Success":
        return "disconnected by the agent"
    if socket_error is not None:
        return describe_os_error(socket_error, peer="broker")
    if name == "Unspecified error":  # paho's word for a connection lost without a socket error
        return "connection closed by the broker"
    return reason_words(rc)


def reason_words(rc: Any) -> str:
    """A paho ReasonCode (MQTT 5, or 3.1.1 CONNACK codes mapped to it) as the broker's words."""
    name = getattr(rc, "getName", None)
    text = name() if name is not None else str(rc)
    value = getattr(rc, "value", None)
    return f"{text[:1].lower()}{text[1:]} (reason code {value})" if value is not None else text


def close_quietly(client: mqtt.Client) -> None:
    with contextlib.suppress(Exception):
        client.disconnect()
    sock = client.socket()
    if sock is not None:
        with contextlib.suppress(Exception):
            sock.close()
