"""linetap.config.loader: YAML -> LineConfig, and every kind of mistake as FILE:LINE: field: message."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from linetap.config.loader import ConfigError, ConfigIssue, load_config, parse_config
from linetap.config.models import LineConfig

# Line numbers matter below: line 1 is `agent:`.
VALID = """\
agent:
  id: line3
  enterprise: acme
  site: cork
  area: sealing
  line: line3
mqtt:
  host: broker.local
  port: 1883
buffer:
  path: data/buffer.duckdb
devices:
  - protocol: modbus
    name: sealer-1
    host: 10.0.0.5
    addressing: zero_based
    poll_interval: 250ms
    tags:
      - name: temperature
        address: 100
        type: float32
      - name: pressure
        address: 102
        type: int16
"""


def write(tmp_path: Path, text: str, name: str = "line.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def errors(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value


def only_issue(tmp_path: Path, text: str) -> ConfigIssue:
    err = errors(tmp_path, text)
    assert len(err.issues) == 1, str(err)
    return err.issues[0]


def test_valid_file_loads(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, VALID))
    assert isinstance(cfg, LineConfig)
    assert cfg.agent.id == "line3"
    assert cfg.mqtt.host == "broker.local"
    (device,) = cfg.devices
    assert device.protocol == "modbus"
    assert device.poll_interval == pytest.approx(0.25)
    assert [t.name for t in device.tags] == ["temperature", "pressure"]
    assert cfg.topic_root == "acme/cork/sealing/line3"


def test_accepts_str_path(tmp_path: Path) -> None:
    assert load_config(str(write(tmp_path, VALID))).agent.id == "line3"


def test_relative_buffer_path_resolves_against_config_folder(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "etc" / "linetap"
    folder.mkdir(parents=True)
    write(folder, VALID)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(Path("..") / "etc" / "linetap" / "line.yaml")
    assert cfg.buffer.path.is_absolute()
    assert cfg.buffer.path.resolve() == (folder / "data" / "buffer.duckdb").resolve()


def test_absolute_buffer_path_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "b.duckdb"
    cfg = load_config(write(tmp_path, VALID.replace("data/buffer.duckdb", str(target))))
    assert cfg.buffer.path == target


def test_yaml_scalars_become_plain_python(tmp_path: Path) -> None:
    # hex addresses, quoted strings, booleans: ruamel's round-trip types must not leak into the models
    text = VALID.replace("address: 100", "address: 0x64").replace("port: 1883", 'port: "1883"')
    cfg = load_config(write(tmp_path, text))
    assert cfg.devices[0].tags[0].address == 100
    assert type(cfg.devices[0].tags[0].address) is int
    assert cfg.mqtt.port == 1883


# --- environment substitution -----------------------------------------------------------------


def test_env_substitution(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LT_TEST_HOST", "mqtt.plant")
    monkeypatch.setenv("LT_TEST_PORT", "8883")
    monkeypatch.setenv("LT_TEST_PASSWORD", "s3cret")
    text = VALID.replace("host: broker.local", "host: ${LT_TEST_HOST}\n  password: ${LT_TEST_PASSWORD}")
    text = text.replace("port: 1883", "port: ${LT_TEST_PORT}")
    cfg = load_config(write(tmp_path, text))
    assert cfg.mqtt.host == "mqtt.plant"
    assert cfg.mqtt.port == 8883
    assert cfg.mqtt.password_value() == "s3cret"


def test_env_default(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("LT_TEST_UNSET", raising=False)
    monkeypatch.setenv("LT_TEST_EMPTY", "")
    monkeypatch.setenv("LT_TEST_SET", "from-env")
    text = VALID.replace("host: broker.local", "host: ${LT_TEST_UNSET:-fallback.local}\n"
                         "  client_id: ${LT_TEST_EMPTY:-cid}-${LT_TEST_SET:-x}\n"
                         "  username: ${LT_TEST_UNSET:-}user")
    cfg = load_config(write(tmp_path, text))
    assert cfg.mqtt.host == "fallback.local"
    assert cfg.mqtt.client_id == "cid-from-env"
    assert cfg.mqtt.username == "user"


def test_env_dollar_escape(tmp_path: Path) -> None:
    text = VALID.replace("host: broker.local", "host: broker.local\n  username: a$${NOT_A_VAR}")
    assert load_config(write(tmp_path, text)).mqtt.username == "a${NOT_A_VAR}"


def test_missing_env_is_an_error_with_file_line_field(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("LT_TEST_MISSING", raising=False)
    text = VALID.replace("port: 1883", "port: 1883\n  password: ${LT_TEST_MISSING}")
    issue = only_issue(tmp_path, text)
    assert (issue.line, issue.field) == (10, "mqtt.password")
    assert "LT_TEST_MISSING is not set" in issue.message
    assert str(issue).startswith(f"{tmp_path / 'line.yaml'}:10: mqtt.password: environment variable")


def test_bad_env_reference(tmp_path: Path) -> None:
    issue = only_issue(tmp_path, VALID.replace("host: broker.local", "host: ${broker"))
    assert (issue.line, issue.field) == (8, "mqtt.host")
    assert "${NAME}" in issue.message


def test_parse_config_with_explicit_environ(tmp_path: Path) -> None:
    text = VALID.replace("host: broker.local", "host: ${H}")
    cfg = parse_config(text, file="x.yaml", base=tmp_path, environ={"H": "h1"})
    assert cfg.mqtt.host == "h1"
    assert cfg.buffer.path == tmp_path / "data" / "buffer.duckdb"


# --- each kind of mistake ---------------------------------------------------------------------


def test_unknown_key(tmp_path: Path) -> None:
    issue = only_issue(tmp_path, VALID.replace("        type: float32", "        type: float32\n        scael: 2"))
    assert (issue.line, issue.field) == (22, "devices[0].tags[0].scael")
    assert issue.message.startswith("unknown key 'scael' (allowed: name, ")
    assert ", table, address, type, " in issue.message and "deadband, max_silence" in issue.message
    assert "did you mean 'scale'?" in issue.message


def test_unknown_top_level_key(tmp_path: Path) -> None:
    issue = only_issue(tmp_path, VALID + "bufer:\n  path: x\n")
    assert (issue.line, issue.field) == (25, "bufer")
    allowed = ", ".join(LineConfig.model_fields)  # agent, mqtt, buffer, logging, ...
    assert f"(allowed: {allowed})" in issue.message
    assert "did you mean 'buffer'?" in issue.message


def test_wrong_type(tmp_path: Path) -> None:
    issue = only_issue(tmp_path, VALID.replace("port: 1883", "port: abc"))
    assert (issue.line, issue.field) == (9, "mqtt.port")
    assert issue.message == "must be a whole number, e.g. 10 (got 'abc')"
    assert not issue.message.startswith("Input should")


def test_wrong_literal(tmp_path: Path) -> None:
    issue = only_issue(tmp_path, VALID.replace("type: int16", "type: int61"))
    assert (issue.line, issue.field) == (24, "devices[0].tags[1].type")
    assert "'bool', 'bit', 'int16'" in issue.message and "(got 'int61')" in issue.message
    assert str(issue).endswith("24: devices[0].tags[1].type: " + issue.message)


def test_bad_duration(tmp_path: Path) -> None:
    issue = only_issue(tmp_path, VALID.replace("poll_interval: 250ms", "poll_interval: 100xs"))
    assert (issue.line, issue.field) == (17, "devices[0].poll_interval")
    assert issue.message == "'100xs' is not a duration; write it like 250ms, 5s, 2m, 1h or 7d"


def test_missing_required_field_points_to_parent_mapping(tmp_path: Path) -> None:
    issue = only_issue(tmp_path, VALID.replace("    addressing: zero_based\n", ""))
    # the device mapping starts on line 13 (`- protocol: modbus`)
    assert (issue.line, issue.field) == (13, "devices[0].addressing")
    assert issue.message.startswith("missing required field")
    assert "zero_based, one_based" in issue.message


def test_missing_required_field_in_nested_mapping(tmp_path: Path) -> None:
    issue = only_issue(tmp_path, VALID.replace("  area: sealing\n", ""))
    assert (issue.line, issue.field) == (1, "agent.area")
    assert issue.message == "missing required field"


def test_no_devices_key(tmp_path: Path) -> None:
    text = VALID[: VALID.index("devices:")]
    issue = only_issue(tmp_path, text)
    assert issue.field == "devices"
    assert issue.line == 1
    assert issue.message.startswith("missing required field")


def test_empty_devices_list(tmp_path: Path) -> None:
    text = VALID[: VALID.index("devices:")] + "devices: []\n"
    issue = only_issue(tmp_path, text)
    assert (issue.line, issue.field) == (12, "devices")
    assert issue.message == "needs at least 1 device (the list is empty)"


def test_devices_key_without_value(tmp_path: Path) -> None:
    text = VALID[: VALID.index("devices:")] + "devices:\n"
    issue = only_issue(tmp_path, text)
    assert (issue.line, issue.field) == (12, "devices")
    assert issue.message.startswith("must be a list")


def test_duplicate_tag_name_points_to_second_tag(tmp_path: Path) -> None:
    issue = only_issue(tmp_path, VALID.replace("name: pressure", "name: temperature"))
    assert (issue.line, issue.field) == (22, "devices[0].tags[1].name")
    assert issue.message == "duplicate tag name 'temperature' (first at line 19)"


DEVICE_2 = """\
  - protocol: modbus
    name: sealer-1
    host: 10.0.0.6
    addressing: one_based
    tags:
      - {name: t, address: 1}
"""


def test_duplicate_device_name(tmp_path: Path) -> None:
    issue = only_issue(tmp_path, VALID + DEVICE_2)
    assert (issue.line, issue.field) == (26, "devices[1].name")
    assert issue.message == "duplicate device name 'sealer-1' (first at line 14)"


def test_bad_address_with_one_based(tmp_path: Path) -> None:
    text = VALID.replace("addressing: zero_based", "addressing: one_based").replace("address: 102", "address: 0")
    issue = only_issue(tmp_path, text)
    assert (issue.line, issue.field) == (23, "devices[0].tags[1].address")
    assert "address 0 is below 1" in issue.message and "'pressure'" in issue.message


def test_tag_type_table_mismatch_points_to_the_tag(tmp_path: Path) -> None:
    issue = only_issue(tmp_path, VALID.replace("        type: int16", "        type: int16\n        table: coil"))
    # "a coil holds one bit: type must be bool, not int16": the key it names
    assert (issue.line, issue.field) == (24, "devices[0].tags[1].type")
    assert "type must be bool" in issue.message
    assert not issue.message.startswith("Value error")


def test_unknown_protocol(tmp_path: Path) -> None:
    issue = only_issue(tmp_path, VALID.replace("protocol: modbus", "protocol: modbsu"))
    assert (issue.line, issue.field) == (13, "devices[0].protocol")
    assert issue.message.startswith("unknown protocol 'modbsu' (known: modbus")


def test_missing_protocol(tmp_path: Path) -> None:
    issue = only_issue(tmp_path, VALID.replace("  - protocol: modbus\n    name", "  - name"))
    assert (issue.line, issue.field) == (13, "devices[0].protocol")
    assert issue.message.startswith("missing required field; one of: modbus")


def test_device_not_a_mapping(tmp_path: Path) -> None:
    issue = only_issue(tmp_path, VALID + "  - sealer-2\n")
    assert (issue.line, issue.field) == (25, "devices[1]")
    assert issue.message == "must be a mapping of `key: value` lines, not the text 'sealer-2'"


def test_topic_level_pattern_message(tmp_path: Path) -> None:
    issue = only_issue(tmp_path, VALID.replace("site: cork", "site: cork/north"))
    assert (issue.line, issue.field) == (4, "agent.site")
    assert "must not contain '/'" in issue.message and "'cork/north'" in issue.message


def test_model_level_error_names_the_key(tmp_path: Path) -> None:
    text = VALID.replace("  port: 1883", "  port: 1883\n  tls:\n    cert_file: line3.pem")
    issue = only_issue(tmp_path, text)
    assert (issue.line, issue.field) == (11, "mqtt.tls.cert_file")
    assert issue.message == "cert_file and key_file go together"


def test_secrets_are_not_echoed(tmp_path: Path) -> None:
    text = VALID.replace("  port: 1883", "  port: 1883\n  password:\n    - hunter2")
    issue = only_issue(tmp_path, text)
    assert issue.field == "mqtt.password"
    assert "hunter2" not in str(issue)


def test_every_error_is_reported_sorted_by_line(tmp_path: Path) -> None:
    text = (VALID.replace("port: 1883", "port: abc")
            .replace("poll_interval: 250ms", "poll_interval: 100xs")
            .replace("type: int16", "type: int61"))
    err = errors(tmp_path, text)
    assert [(i.line, i.field) for i in err.issues] == [
        (9, "mqtt.port"), (17, "devices[0].poll_interval"), (24, "devices[0].tags[1].type")]
    lines = str(err).splitlines()
    assert len(lines) == 3
    assert all(line.startswith(f"{tmp_path / 'line.yaml'}:") for line in lines)


# --- the file itself --------------------------------------------------------------------------


def test_yaml_syntax_error(tmp_path: Path) -> None:
    issue = only_issue(tmp_path, VALID.replace("  site: cork", "  site: cork\n   oops: 1"))
    assert issue.line == 5
    assert issue.message.startswith("a `:` where no key can start in `oops: 1`")


def test_yaml_unclosed_flow(tmp_path: Path) -> None:
    issue = only_issue(tmp_path, VALID + "  - {protocol: modbus, name: x\n")
    assert "`{` opened at line 25 is not closed with `}`" in issue.message, issue.message
    assert issue.line is not None and issue.line >= 25


def test_tab_indentation(tmp_path: Path) -> None:
    issue = only_issue(tmp_path, "agent:\n\tid: x\n")
    assert issue.line == 2
    assert "tab character in `<tab>id: x`" in issue.message and "spaces" in issue.message


def test_duplicate_yaml_key(tmp_path: Path) -> None:
    issue = only_issue(tmp_path, VALID.replace("  port: 1883", "  port: 1883\n  host: other"))
    assert (issue.line, issue.field) == (10, "mqtt.host")
    assert issue.message == "duplicate key 'host': each key may appear only once in a mapping (first set at line 8)"


def test_duplicate_yaml_key_in_sequence_item(tmp_path: Path) -> None:
    issue = only_issue(tmp_path, VALID.replace("        type: int16", "        type: int16\n        address: 5"))
    assert (issue.line, issue.field) == (25, "devices[0].tags[1].address")
    assert "first set at line 23" in issue.message


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    issue = only_issue(tmp_path, text)
    assert issue.line == 1
    assert "empty" in issue.message


@pytest.mark.parametrize("text, kind", [("- a\n- b\n", "a list"), ("just text\n", "the text 'just text'"),
                                        ("42\n", "the number 42")])
def test_top_level_not_a_mapping(tmp_path: Path, text: str, kind: str) -> None:
    issue = only_issue(tmp_path, text)
    assert issue.line == 1
    assert issue.message.startswith("the top level must be a mapping")
    assert issue.message.endswith(f"not {kind}")


def test_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert str(info.value) == f"{tmp_path / 'nope.yaml'}: file not found"
    assert info.value.issues[0].line is None


def test_folder_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(tmp_path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "line.yaml"
    path.write_bytes(b"agent:\n  id: caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.issues[0].line == 2
    assert "UTF-8" in str(info.value)


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "line.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + VALID.encode())
    assert load_config(path).agent.id == "line3"


def test_issue_format_without_line_or_field() -> None:
    assert str(ConfigIssue("a.yaml", 3, "x.y", "bad")) == "a.yaml:3: x.y: bad"
    assert str(ConfigIssue("a.yaml", 3, "", "bad")) == "a.yaml:3: bad"
    assert str(ConfigIssue("a.yaml", None, "", "bad")) == "a.yaml: bad"


# --- stations (per-unit capture) ---------------------------------------------------------------

STATION = """\
stations:
  - name: station-1
    device: sealer-1
    serial: {tag: pressure}
    start:
      tag: temperature
      on: rising
    parameters:
      - {name: tmax, tag: temperature, reduce: max}
"""


def test_station_with_unknown_tag_points_to_that_tag(tmp_path: Path) -> None:
    text = VALID + STATION.replace("tag: temperature, reduce", "tag: temprature, reduce")
    issue = only_issue(tmp_path, text)
    assert (issue.line, issue.field) == (33, "stations[0].parameters[0].tag")
    assert "has no tag 'temprature'" in issue.message


def test_station_with_unknown_device(tmp_path: Path) -> None:
    issue = only_issue(tmp_path, VALID + STATION.replace("device: sealer-1", "device: sealer-9"))
    assert (issue.line, issue.field) == (27, "stations[0].device")
    assert "no device named 'sealer-9'" in issue.message


def test_station_duplicate_parameter(tmp_path: Path) -> None:
    text = VALID + STATION + "      - {name: tmax, tag: pressure, reduce: min}\n"
    issue = only_issue(tmp_path, text)
    assert (issue.line, issue.field) == (34, "stations[0].parameters[1].name")
    assert issue.message == "duplicate parameter name 'tmax' (first at line 33)"


def test_station_components_are_read_from_tags(tmp_path: Path) -> None:
    text = VALID + STATION.replace("    start:\n", "    lot: pressure\n    components:\n      pouch_film: temperature\n"
                                   "      label_roll: pressure\n    start:\n")
    station = load_config(write(tmp_path, text)).stations[0]
    assert station.components == {"pouch_film": "temperature", "label_roll": "pressure"}
    assert (("components", "pouch_film"), "temperature") in station.tag_refs()
    assert {"temperature", "pressure"} <= station.tags()


def test_station_component_with_unknown_tag_points_to_that_component(tmp_path: Path) -> None:
    text = VALID + STATION.replace("    start:\n", "    components:\n      pouch_film: temperature\n"
                                   "      label_roll: film_lot\n    start:\n")
    issue = only_issue(tmp_path, text)
    assert (issue.line, issue.field) == (31, "stations[0].components.label_roll")
    assert "device 'sealer-1' has no tag 'film_lot'" in issue.message


def test_station_component_name_must_be_a_plain_name(tmp_path: Path) -> None:
    text = VALID + STATION.replace("    start:\n", "    components: {pouch film: temperature}\n    start:\n")
    issue = only_issue(tmp_path, text)
    assert (issue.line, issue.field) == (29, "stations[0].components.pouch film")
    assert "component name 'pouch film'" in issue.message
