"""The config model of an OPC UA device (server, PLC, gateway) and its node references."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from linetap.config.issues import At
from linetap.config.secrets import secret_value
from linetap.config.units import Duration

from .base import DeviceBase, TagBase, resolve
from .exception import DEFAULT_MAX_SILENCE, TagException

SecurityPolicyName = Literal["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"]
SecurityModeName = Literal["None", "Sign", "SignAndEncrypt"]

DEFAULT_ITEMS_PER_CALL = 500  # when the server publishes no operation limit

_NODE_ID_PREFIX = re.compile(r"^\s*(ns|nsu|i|s|g|b|svr)=", re.IGNORECASE)


class OpcUaDeadband(BaseModel):
    """A data-change filter: report a change only when it exceeds the deadband."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["absolute", "percent"] = Field(
        "absolute", description="absolute: in engineering units; percent: of the node's EURange")
    value: float = Field(ge=0, description="the deadband (engineering units, or 0-100 for percent)")

    @model_validator(mode="after")
    def _percent(self) -> Self:
        if self.type == "percent" and self.value > 100:
            raise ValueError("a percent deadband is between 0 and 100")
        return self


class OpcUaTag(TagBase):
    """One variable on the OPC UA server."""

    node: str = Field(
        min_length=1,
        description="node id (ns=2;s=..., ns=3;i=..., nsu=<namespace uri>;s=...) or browse path from "
        "the Objects folder (Line/Sealer1/Temperature, 2:Line/2:Sealer1/2:Temperature)",
    )
    unit: str | None = Field(None, description="engineering unit; defaults to the node's EUInformation")
    description: str | None = None
    deadband: OpcUaDeadband | None = Field(None, description="overrides the device's deadband for this tag")
    max_silence: Duration | None = Field(None, gt=0, description="poll: overrides the device's max_silence")
    sampling_interval: Duration | None = Field(None, description="overrides the device's sampling interval")
    data_type: str | None = Field(None, description="informational (as found by `linetap browse`)")


class OpcUaSecurity(BaseModel):
    """Secure channel and user identity."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: SecurityPolicyName = Field("None", description="security policy of the secure channel")
    mode: SecurityModeName | None = Field(
        None, description="Sign or SignAndEncrypt (default SignAndEncrypt when a policy is set)")
    certificate: Path | None = Field(None, description="this client's certificate (DER or PEM)")
    private_key: Path | None = Field(None, description="this client's private key (PEM or DER)")
    private_key_password: SecretStr | None = Field(None, description="use ${ENV_VAR}")
    server_certificate: Path | None = Field(None, description="the server certificate to trust (DER or PEM)")
    trust_dir: Path | None = Field(
        None, description="folder of trusted server/CA certificates (*.der, *.pem); either this or "
        "server_certificate is required with a security policy")
    username: str | None = Field(None, description="user name; anonymous when not given")
    password: SecretStr | None = Field(None, description="use ${ENV_VAR}, never a literal secret")
    password_file: Path | None = Field(None, description="file whose first line is the password")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.policy == "None":
            if self.mode not in (None, "None"):
                raise ValueError(f"mode {self.mode} needs a security policy (e.g. Basic256Sha256)")
        else:
            if self.mode == "None":
                raise ValueError(f"policy {self.policy} needs mode Sign or SignAndEncrypt")
            if self.mode is None:
                object.__setattr__(self, "mode", "SignAndEncrypt")
            if self.certificate is None or self.private_key is None:
                raise ValueError(f"policy {self.policy} needs `certificate` and `private_key` "
                                 "(create them with `linetap certs create`)")
            if self.server_certificate is None and self.trust_dir is None:
                raise ValueError("a secured connection needs the server's certificate: set `server_certificate` "
                                 "or `trust_dir`")
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        if (self.password is not None or self.password_file is not None) and not self.username:
            raise ValueError("a password needs a `username`")
        return self

    @property
    def effective_mode(self) -> str:
        return self.mode or ("None" if self.policy == "None" else "SignAndEncrypt")

    def password_value(self) -> str | None:
        """The password (`password`, or the first line of `password_file`); None when not configured.
        A password file that cannot be used raises FileProblem, as for MQTT (linetap.config.secrets)."""
        return secret_value(self.password, self.password_file, "security.password_file")


class OpcUaDeviceConfig(DeviceBase):
    """An OPC UA server (PLC, controller, gateway)."""

    protocol: Literal["opcua"]
    endpoint: str = Field(description="opc.tcp://host:port[/path]")
    mode: Literal["subscribe", "poll"] = Field("subscribe", description="subscribe (monitored items) or poll (reads)")
    publishing_interval: Duration = Field(0.5, gt=0, description="subscribe: how often the server sends changes")
    sampling_interval: Duration | None = Field(
        None, ge=0, description="subscribe: how often the server samples each value (default: publishing_interval; "
        "0 = as fast as the server can)")
    queue_size: int = Field(
        1, ge=0, le=100_000, description="subscribe: values the server keeps per item between publishes "
        "(>1 keeps every sampled change, not only the last)")
    deadband: OpcUaDeadband | None = Field(
        None, description="data-change deadband for every tag: subscribe: the server's filter; poll: the agent's "
        "report by exception (absolute only)")
    max_silence: Duration | None = Field(
        None, gt=0, description="poll: send a tag that did not move at least this often (report by exception; "
        f"default {DEFAULT_MAX_SILENCE:g}s once a deadband applies)")
    poll_interval: Duration = Field(1.0, gt=0, description="poll: how often every tag is read")
    timeout: Duration = Field(5.0, gt=0, description="per-request and connect timeout")
    keepalive: Duration = Field(5.0, gt=0, description="subscribe: the server sends at least this often; "
                                "silence for 3x this means the connection is lost")
    max_items_per_call: int | None = Field(
        None, ge=1, le=100_000, description="cap on nodes per Read / CreateMonitoredItems call "
        f"(default: the server's OperationLimits, or {DEFAULT_ITEMS_PER_CALL})")
    namespace: str | None = Field(None, description="namespace URI for browse-path segments without `idx:`")
    read_units: bool = Field(True, description="read EUInformation for tags without `unit`")
    security: OpcUaSecurity = OpcUaSecurity()
    tags: list[OpcUaTag] = Field(min_length=1)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        if not re.match(r"^opc\.tcp://[^/:\s]+(:\d+)?(/.*)?$", v):
            raise ValueError(f"{v!r} is not an OPC UA endpoint; write it like opc.tcp://192.168.0.10:4840")
        return v

    @model_validator(mode="after")
    def _report_by_exception(self) -> Self:
        if self.mode == "subscribe":
            where = [("max_silence",)] if self.max_silence is not None else []
            where += [("tags", i, "max_silence") for i, t in enumerate(self.tags) if t.max_silence is not None]
            if where:
                raise At(where[0], "max_silence is for mode: poll; subscribed, the server reports changes itself "
                         "(keepalive says it is alive)")
            return self
        where = [("deadband", "type")] if self.deadband is not None and self.deadband.type == "percent" else []
        where += [("tags", i, "deadband", "type") for i, t in enumerate(self.tags)
                  if t.deadband is not None and t.deadband.type == "percent"]
        if where:
            raise At(where[0], "a percent deadband is of the node's EURange, which only the server applies "
                     "(mode: subscribe); polled, give type: absolute (engineering units)")
        return self

    def exception_rules(self) -> dict[str, TagException] | None:
        """Poll mode: report by exception in the agent (`linetap.agent.deadband`), the tag's deadband and
        max_silence over the device's; None in subscribe mode (the server filters) or with no rule."""
        if self.mode != "poll":
            return None
        rules = {}
        for t in self.tags:
            deadband, silence = t.deadband or self.deadband, t.max_silence or self.max_silence
            if deadband is not None or silence is not None:
                rules[t.name] = TagException(True, deadband.value if deadband else None, None,
                                             silence if silence is not None else DEFAULT_MAX_SILENCE)
        return rules or None

    @model_validator(mode="after")
    def _check_node_refs(self) -> Self:
        for tag in self.tags:
            try:
                parse_node_ref(tag.node)
            except ValueError as err:
                raise ValueError(f"tag {tag.name!r}: {err}") from None
        return self

    def resolve_paths(self, base: Path) -> Self:
        files = ("certificate", "private_key", "server_certificate", "trust_dir", "password_file")
        security = self.security.model_copy(update={f: resolve(getattr(self.security, f), base) for f in files})
        return self.model_copy(update={"security": security})


def parse_node_ref(text: str) -> tuple[str, Any]:
    """("nodeid", NodeId | ExpandedNodeId) or ("path", [(ns index | None, name), ...])."""
    from asyncua import ua

    text = text.strip()
    if _NODE_ID_PREFIX.match(text):
        try:
            return "nodeid", ua.NodeId.from_string(text)
        except Exception as err:  # asyncua raises several types here
            raise ValueError(f"{text!r} is not a valid node id ({err})") from None
    segments = [s for s in text.split("/") if s]
    if segments and segments[0] in ("Objects", "0:Objects"):
        segments = segments[1:]
    if not segments:
        raise ValueError(f"{text!r} is neither a node id (ns=2;s=...) nor a browse path (Folder/Variable)")
    out: list[tuple[int | None, str]] = []
    for seg in segments:
        m = re.match(r"^(\d+):(.+)$", seg)
        out.append((int(m.group(1)), m.group(2)) if m else (None, seg))
    return "path", out
