"""Alias bombs, secrets with one behaviour, OPC UA paths resolved against the config's folder."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import pytest
from pydantic import SecretStr

from linetap.config.devices.opcua import OpcUaSecurity
from linetap.config.loader import ConfigError, parse_config
from linetap.config.models import MQTTConfig
from linetap.config.secrets import FileProblem
from linetap.config.yaml_doc import MAX_ALIAS_NODES

HEAD = "agent: {id: a, enterprise: e, site: s, area: a, line: l}\n"
DEVICE = "devices:\n  - {protocol: modbus, name: d, host: h, addressing: zero_based, tags: [{name: t, address: 0}]}\n"


def laughs(levels: int, width: int) -> str:
    text = "l0: &l0 [" + ", ".join(['"lol"'] * width) + "]\n"
    for n in range(1, levels):
        text += f"l{n}: &l{n} [" + ", ".join([f"*l{n - 1}"] * width) + "]\n"
    return text


@pytest.mark.parametrize("bomb", [
    HEAD + laughs(7, 9) + "devices: *l6\n",  # 9^7 aliases in ~400 bytes
    HEAD + laughs(10, 10) + DEVICE,  # billion laughs
    "a: &a {x: 1, y: 2}\n" + "".join(  # through merge keys
        f"{c}: &{c} {{<<: *{p}, " + ", ".join(f"{p}{i}: *{p}" for i in range(8)) + "}\n"
        for p, c in zip("abcdef", "bcdefg", strict=True)),
])
def test_alias_bomb_is_one_error_fast_and_small(bomb: str) -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError) as err:
        parse_config(bomb, file="bomb.yaml")
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, elapsed
    assert len(err.value.issues) == 1
    issue = err.value.issues[0]
    assert issue.line is not None and f"YAML aliases expand to more than {MAX_ALIAS_NODES} nodes" in str(issue)
    tracemalloc.start()  # memory, measured apart (tracing slows everything down)
    try:
        with pytest.raises(ConfigError):
            parse_config(bomb, file="bomb.yaml")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100 * 2**20, peak


def test_aliases_within_the_limit_still_work() -> None:
    text = HEAD + "tags: &tags [{name: t, address: 0}, {name: u, address: 1}]\n"
    text = text.replace("tags: &tags", "x-tags: &tags")
    with pytest.raises(ConfigError, match="unknown key 'x-tags'"):
        parse_config(text + DEVICE)
    ok = HEAD + "devices:\n  - &dev {protocol: modbus, name: d, host: h, addressing: zero_based,\n" \
        "         tags: &tags [{name: t, address: 0}, {name: u, address: 1}]}\n" \
        "  - {protocol: modbus, name: e, host: h, addressing: zero_based, tags: *tags}\n"
    cfg = parse_config(ok)
    assert [len(d.tags) for d in cfg.devices] == [2, 2]


def test_one_secrets_behaviour(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileProblem, match="does not exist"):
        MQTTConfig(username="u", password_file=missing).password_value()
    with pytest.raises(FileProblem, match="security.password_file .* does not exist"):
        OpcUaSecurity(username="u", password_file=missing).password_value()
    (tmp_path / "pw").write_text("s3cret\nignored\n")
    assert MQTTConfig(username="u", password_file=tmp_path / "pw").password_value() == "s3cret"
    assert OpcUaSecurity(username="u", password_file=tmp_path / "pw").password_value() == "s3cret"
    assert MQTTConfig(password=SecretStr("x")).password_value() == "x"
    assert MQTTConfig().password_value() is None


def test_opcua_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    text = HEAD + ("devices:\n  - protocol: opcua\n    name: p\n    endpoint: opc.tcp://127.0.0.1:4840\n"
                   "    security: {username: op, password_file: pw}\n    tags: [{name: t, node: ns=2;s=T}]\n")
    cfg = parse_config(text, base=tmp_path)
    assert cfg.devices[0].security.password_file == tmp_path / "pw"
    with pytest.raises(ConfigError, match="password_file .*nope does not exist"):
        parse_config(text.replace("password_file: pw", "password_file: nope"), base=tmp_path)


def test_literal_password_needs_allow_literal_secrets() -> None:
    text = HEAD + "mqtt: {username: u, password: hunter2}\n" + DEVICE
    with pytest.raises(ConfigError, match="allow_literal_secrets") as err:
        parse_config(text)
    assert "hunter2" not in str(err.value)
    cfg = parse_config("allow_literal_secrets: true\n" + text)
    assert cfg.mqtt.password_value() == "hunter2"
    assert parse_config(text.replace("hunter2", "'${PW}'"), environ={"PW": "x"}).mqtt.password_value() == "x"


def test_url_credentials_are_never_echoed() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(HEAD + "mqtt: {url: 'mqtts://line3:hunter2@broker:8883'}\n" + DEVICE)
    assert "hunter2" not in str(err.value) and "`username`" in str(err.value)


LINE_WITH_SECURED_OPCUA = """\
agent: {id: line-7, enterprise: acme, site: s, area: a, line: l}
devices:
  - protocol: opcua
    name: sealer1
    endpoint: opc.tcp://10.0.12.40:4840
    security:
      policy: Basic256Sha256
      certificate: pki/linetap-cert.der
      private_key: pki/linetap-key.pem
      trust_dir: /etc/linetap/trusted
    tags: [{name: temp, node: "ns=2;s=T"}]
stations:
  - {name: sealer1, device: sealer1, serial: {tag: temp}, start: {tag: temp, on: rising}}
  - {name: sealer1, device: sealer1, serial: {tag: temp}, start: {tag: temp, on: rising}}
"""


def test_relative_opcua_certificate_paths_are_the_config_folders(tmp_path: Path) -> None:
    folder = tmp_path / "line 7"
    text = LINE_WITH_SECURED_OPCUA[:LINE_WITH_SECURED_OPCUA.index("stations:")]
    security = parse_config(text, base=folder, check_files=False).devices[0].security
    assert security.certificate == folder / "pki/linetap-cert.der"
    assert security.private_key == folder / "pki/linetap-key.pem"
    assert security.trust_dir == Path("/etc/linetap/trusted")  # absolute: as written


def test_duplicate_station_points_at_the_second(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(LINE_WITH_SECURED_OPCUA, base=tmp_path, check_files=False)
    (issue,) = err.value.issues
    assert (issue.line, issue.field) == (14, "stations[1].name")
    assert issue.message == "duplicate station name 'sealer1' (first at line 13)"


def test_an_unknown_payload_format_points_at_its_line() -> None:
    text = HEAD + "mqtt:\n  host: broker.plant.local\n  payload: sparkplug_b\n" + DEVICE
    with pytest.raises(ConfigError) as err:
        parse_config(text, file="line-7.yaml", check_files=False)
    (issue,) = err.value.issues
    assert (issue.line, issue.field) == (4, "mqtt.payload")
    assert "'json'" in issue.message and "sparkplug_b" in str(err.value)
    assert "line-7.yaml:4" in str(err.value)
