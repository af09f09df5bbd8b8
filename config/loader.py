"""Read a line config (YAML) into a validated `LineConfig`, with errors as FILE:LINE: field: message.

    cfg = load_config("line-3.yaml")          # LineConfig, paths resolved against the file's folder

Steps: read the file (UTF-8), parse it with ruamel.yaml's round-trip loader (which keeps the line of
every mapping key and sequence item, and refuses duplicate keys), substitute `${VAR}` /
`${VAR:-default}` in string values from the environment, validate with pydantic, then resolve
relative paths. Everything that can be wrong with the file is raised as one `ConfigError` carrying
every issue found, each pointing at a line of the file; nothing else escapes for a bad file.
"""

from __future__ import annotations

import difflib
import os
import re
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.scalarbool import ScalarBoolean

from .models import LineConfig

__all__ = ["ConfigError", "ConfigIssue", "config_json_schema", "load_config", "parse_config"]

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

Path_ = tuple[str | int, ...]  # a position in the document: keys and sequence indexes


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config file. `line` is 1-based (None when the file could not be read);
    `field` is the path in the document, e.g. `devices[0].tags[2].type` ("" when unknown)."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class ConfigError(Exception):
    """The config file is wrong. `str()` is one `FILE:LINE: field: message` line per issue."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = sorted(issues, key=lambda i: (i.file, i.line if i.line is not None else 0))
        super().__init__("\n".join(str(i) for i in self.issues))

    def __str__(self) -> str:
        return "\n".join(str(i) for i in self.issues)


# --------------------------------------------------------------------------------------------
# public API


def load_config(path: str | Path) -> LineConfig:
    """Read, substitute, validate and resolve one line config file. Raises ConfigError."""
    path = Path(path)
    name = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError([ConfigIssue(name, None, "", "file not found")]) from None
    except IsADirectoryError:
        raise ConfigError([ConfigIssue(name, None, "", "is a folder, not a config file")]) from None
    except OSError as exc:
        raise ConfigError([ConfigIssue(name, None, "", f"cannot read the file: {exc.strerror or exc}")]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError([ConfigIssue(name, line, "", f"not UTF-8 text (byte 0x{raw[exc.start]:02x}); "
                                       "save the file as UTF-8")]) from None
    return parse_config(text, file=name, base=path.absolute().parent)


def parse_config(text: str, file: str = "<config>", base: Path | None = None,
                 environ: dict[str, str] | None = None) -> LineConfig:
    """Like load_config, from a string. `base` resolves relative paths (default: current folder);
    `environ` replaces os.environ for `${VAR}` substitution."""
    document = _parse_yaml(text, file)
    data, lines = _to_plain(document)
    env = os.environ if environ is None else environ
    issues: list[ConfigIssue] = []
    data = _substitute(data, (), env, lines, file, issues)
    if issues:
        raise ConfigError(issues)
    try:
        cfg = LineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([_issue(err, data, lines, file) for err in exc.errors()]) from None
    return cfg.resolve_paths(base if base is not None else Path.cwd())


def config_json_schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of a line config file, for editors (YAML language server) and CI."""
    schema = LineConfig.model_json_schema(mode="validation")
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": "https://linetap.dev/schemas/line-config.json",
        "title": "linetap line configuration",
        **{k: v for k, v in schema.items() if k != "title"},
    }


# --------------------------------------------------------------------------------------------
# YAML -> plain data + line of every position


def _parse_yaml(text: str, file: str) -> CommentedMap:
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        document = yaml.load(text)
    except DuplicateKeyError as exc:
        raise ConfigError([_duplicate_key_issue(exc, text, file)]) from None
    except MarkedYAMLError as exc:
        raise ConfigError([_syntax_issue(exc, file)]) from None
    except YAMLError as exc:  # pragma: no cover - unmarked errors are rare
        raise ConfigError([ConfigIssue(file, None, "", f"YAML error: {exc}")]) from None
    if document is None:
        raise ConfigError([ConfigIssue(file, 1, "", "the file is empty; a line config needs at least "
                                       "`agent:` and `devices:`")])
    if not isinstance(document, CommentedMap):
        kind = _describe(document)
        raise ConfigError([ConfigIssue(file, 1, "", f"the top level must be a mapping of `key: value` lines "
                                       f"(agent:, mqtt:, buffer:, devices: ...), not {kind}")])
    return document


def _syntax_issue(exc: MarkedYAMLError, file: str) -> ConfigIssue:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else None
    problem = exc.problem or exc.context or "invalid YAML"
    message = f"YAML syntax error: {problem}"
    if exc.context and exc.problem and exc.context_mark is not None:
        message += f" ({exc.context} started at line {exc.context_mark.line + 1})"
    if "'\\t'" in problem:
        message += "; YAML does not allow tabs for indentation, use spaces"
    elif "mapping values are not allowed" in problem:
        message += "; check the indentation, and quote values that contain ': '"
    return ConfigIssue(file, line, "", message)


def _duplicate_key_issue(exc: DuplicateKeyError, text: str, file: str) -> ConfigIssue:
    mark = exc.problem_mark
    line = mark.line + 1 if mark is not None else None
    match = re.search(r'duplicate key "(.*?)" with value', exc.problem or "")
    key = match.group(1) if match else "?"
    message = f"duplicate key {key!r}: each key may appear only once in a mapping"
    field = _format_path((*_mapping_path(text, exc.context_mark), key)) if exc.context_mark else ""
    # Find where the key was first set: same column, between the mapping's start and here.
    if mark is not None and exc.context_mark is not None:
        source = text.splitlines()
        pattern = re.compile(r"\s*(?:-\s+)?['\"]?" + re.escape(key) + r"['\"]?\s*:")
        for n in range(exc.context_mark.line, mark.line):
            if n < len(source) and pattern.match(source[n]) and _key_column(source[n]) == mark.column:
                message += f" (first set at line {n + 1})"
                break
    return ConfigIssue(file, line, field, message)


def _mapping_path(text: str, mark: Any) -> Path_:
    """Where the mapping that starts at `mark` sits in the document (re-read allowing duplicates)."""
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = True
    try:
        document = yaml.load(text)
    except YAMLError:  # pragma: no cover - it parsed up to the duplicate a moment ago
        return ()

    def find(node: Any, path: Path_) -> Path_ | None:
        if isinstance(node, CommentedMap):
            if (node.lc.line, node.lc.col) == (mark.line, mark.column):
                return path
            children = list(node.items())
        elif isinstance(node, CommentedSeq):
            children = list(enumerate(node))
        else:
            return None
        for key, value in children:
            if (found := find(value, (*path, _scalar(key)))) is not None:
                return found
        return None

    return find(document, ()) or ()


def _key_column(line: str) -> int:
    stripped = line.lstrip()
    col = len(line) - len(stripped)
    if stripped.startswith("- "):
        col += 2 + len(stripped[2:]) - len(stripped[2:].lstrip())
    return col


def _to_plain(document: CommentedMap) -> tuple[Any, dict[Path_, int]]:
    """Plain dicts/lists/scalars for pydantic, and the 1-based line of every key and item."""
    lines: dict[Path_, int] = {(): document.lc.line + 1}

    def convert(node: Any, path: Path_, line: int) -> Any:
        if isinstance(node, CommentedMap):
            out = {}
            for key, value in node.items():
                try:
                    key_line = node.lc.key(key)[0] + 1
                except (KeyError, TypeError):  # merged in from an anchor (`<<: *x`)
                    key_line = line
                key = _scalar(key)
                lines[(*path, key)] = key_line
                out[key] = convert(value, (*path, key), key_line)
            return out
        if isinstance(node, CommentedSeq):
            out_list = []
            for index, value in enumerate(node):
                try:
                    item_line = node.lc.item(index)[0] + 1
                except (KeyError, TypeError):
                    item_line = line
                lines[(*path, index)] = item_line
                out_list.append(convert(value, (*path, index), item_line))
            return out_list
        return _scalar(node)

    return convert(document, (), lines[()]), lines


def _scalar(value: Any) -> Any:
    """ruamel's round-trip scalar subclasses (HexInt, ScalarFloat, quoted strings...) as plain types."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, ScalarBoolean):
        return bool(value)
    for kind in (bool, str, int, float):
        if isinstance(value, kind):
            return kind(value)
    return value  # dates and the like: pydantic reports them


# --------------------------------------------------------------------------------------------
# ${VAR} substitution

_VAR = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}|\$\{")


def _substitute(node: Any, path: Path_, env: Any, lines: dict[Path_, int], file: str,
                issues: list[ConfigIssue]) -> Any:
    if isinstance(node, dict):
        return {k: _substitute(v, (*path, k), env, lines, file, issues) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, (*path, i), env, lines, file, issues) for i, v in enumerate(node)]
    if not isinstance(node, str) or "${" not in node:
        return node

    def replace(match: re.Match[str]) -> str:
        whole = match.group(0)
        if whole == "$${":
            return "${"
        name = match.group(1)
        if name is None:
            issues.append(ConfigIssue(file, lines.get(path), _format_path(path),
                                      "bad ${...} reference: write ${NAME} or ${NAME:-default}"))
            return whole
        value = env.get(name)
        if value:  # like the shell's ${NAME:-default}: an empty variable takes the default too
            return value
        if match.group(2) is not None:
            return match.group(3)
        if value is None:
            issues.append(ConfigIssue(file, lines.get(path), _format_path(path),
                                      f"environment variable {name} is not set (set it, or write "
                                      f"${{{name}:-default}})"))
        return ""

    return _VAR.sub(replace, node)


# --------------------------------------------------------------------------------------------
# pydantic errors -> issues

_SECRET = re.compile(r"password|secret|token|key_file", re.IGNORECASE)
_PATTERNS = {
    r"^[^/#+\s]+$": "must not contain '/', '#', '+' or spaces (it is one level of the MQTT topic)",
    r"^[A-Za-z0-9_.\-]+$": "may contain only letters, digits, '_', '.' and '-'",
    r"^[A-Za-z0-9_\-]+$": "may contain only letters, digits, '_' and '-'",
}


def _issue(err: dict[str, Any], data: Any, lines: dict[Path_, int], file: str) -> ConfigIssue:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    path, holder = _walk(err["loc"], data)
    value = err.get("input")
    message = err["msg"]

    if kind == "missing":
        message = "missing required field" + _missing_hint(holder, path[-1])
    elif kind == "extra_forbidden":
        key = path[-1]
        allowed = list(holder.model_fields) if holder else []
        message = f"unknown key {key!r}"
        if allowed:
            message += f" (allowed: {', '.join(allowed)})"
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            if close:
                message += f"; did you mean {close[0]!r}?"
    elif kind == "union_tag_invalid":
        disc = str(ctx.get("discriminator", "")).strip("'\"")
        path = (*path, disc)
        known = str(ctx.get("expected_tags", "")).replace("'", "")
        message = f"unknown {disc} {ctx.get('tag')!r} (known: {known})"
        close = difflib.get_close_matches(str(ctx.get("tag")), known.split(", "), n=1, cutoff=0.6)
        if close:
            message += f"; did you mean {close[0]!r}?"
    elif kind == "union_tag_not_found":
        disc = str(ctx.get("discriminator", "")).strip("'\"")
        path = (*path, disc)
        message = "missing required field" + _union_tags_hint(err["loc"], data)
    elif kind in ("model_type", "model_attributes_type", "dict_type"):
        message = f"must be a mapping of `key: value` lines, not {_describe(value)}"
    elif kind == "list_type":
        message = f"must be a list (one `- ` item per line), not {_describe(value)}"
    elif kind == "too_short" and ctx.get("field_type") == "List":
        noun = str(path[-1]).rstrip("s") if path and isinstance(path[-1], str) else "item"
        n = ctx.get("min_length", 1)
        message = (f"needs at least {n} {noun}{'s' if n != 1 else ''}"
                   f"{' (the list is empty)' if not ctx.get('actual_length') else ''}")
    elif kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        message = _PATTERNS.get(pattern, f"must match the pattern {pattern}") + _got(path, value)
    elif kind in ("value_error", "assertion_error"):
        message = re.sub(r"^(Value error|Assertion failed), ", "", message)
        if isinstance(value, dict):
            path, message = _point_into(path, message, data, lines)
        elif not _mentions(message, value):
            message += _got(path, value)
    else:
        message = re.sub(r"^(Input|String|List|Value|Dictionary) should( be| have)?", _must, message)
        if not _mentions(message, value):
            message += _got(path, value)
    return ConfigIssue(file, _line_of(path, lines), _format_path(path), message)


def _must(match: re.Match[str]) -> str:
    verb = match.group(2) or ""
    return {" be": "must be", " have": "must have"}.get(verb, "must")


def _mentions(message: str, value: Any) -> bool:
    return isinstance(value, str) and repr(value) in message


def _got(path: Path_, value: Any) -> str:
    if any(isinstance(p, str) and _SECRET.search(p) for p in path):
        return ""
    if value is None:
        return " (the value is empty)"
    if isinstance(value, str | int | float | bool):
        text = repr(value)
        return f" (got {text if len(text) <= 60 else text[:57] + '...'})"
    return f" (got {_describe(value)})"


def _describe(value: Any) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the text {value!r}" if len(value) <= 40 else "a text"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    return f"a {type(value).__name__}"


def _point_into(path: Path_, message: str, data: Any, lines: dict[Path_, int]) -> tuple[Path_, str]:
    """A model-level error (the whole mapping failed a check): point at the item or key it names.

    `duplicate tag name 'x'` -> the second tag named x (and say where the first is);
    `tag 'x': address 0 is below 1` -> that tag's `address`; `cert_file and key_file go together`
    -> the first of those keys present in the mapping."""
    node = _node_at(data, path)
    if not isinstance(node, dict):
        return path, message
    for name in re.findall(r"'([^']+)'", message):
        for key, items in node.items():
            if not isinstance(items, list):
                continue
            hits = [i for i, item in enumerate(items) if isinstance(item, dict) and item.get("name") == name]
            if not hits:
                continue
            if message.startswith("duplicate") and len(hits) >= 2:
                first = lines.get((*path, key, hits[0], "name"))
                where = f" (first at line {first})" if first else ""
                return (*path, key, hits[1], "name"), message + where
            item_path: Path_ = (*path, key, hits[0])
            rest = message.split(f"'{name}'", 1)[1]
            for other in reversed(re.findall(r"'([^']+)'", rest)):  # "station 's': device 'd' has no tag 'x'"
                if (inner := _find_value(items[hits[0]], other)) is not None:
                    return (*item_path, *inner), message
            mentioned = _first_key_mentioned(rest, items[hits[0]])
            return ((*item_path, mentioned) if mentioned else item_path), message
    mentioned = _first_key_mentioned(message, node)
    return ((*path, mentioned) if mentioned else path), message


def _find_value(node: Any, value: str) -> Path_ | None:
    """Where a scalar equal to `value` sits under node (depth first), except under `name`."""
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        if key == "name":
            continue
        if child == value:
            return (key,)
        if (inner := _find_value(child, value)) is not None:
            return (key, *inner)
    return None


def _first_key_mentioned(text: str, mapping: dict[str, Any]) -> str | None:
    best: tuple[int, str] | None = None
    for key in mapping:
        if isinstance(key, str) and (m := re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", text)):
            if best is None or m.start() < best[0]:
                best = (m.start(), key)
    return best[1] if best else None


def _line_of(path: Path_, lines: dict[Path_, int]) -> int | None:
    for n in range(len(path), -1, -1):
        if path[:n] in lines:
            return lines[path[:n]]
    return None


def _format_path(path: Path_) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _node_at(data: Any, path: Path_) -> Any:
    node = data
    for part in path:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return None
    return node


# --------------------------------------------------------------------------------------------
# Following a pydantic error location through the models and the data


@dataclass
class _Union:
    discriminator: str | None
    tags: dict[str, type[BaseModel]]


def _walk(loc: tuple[Any, ...], data: Any) -> tuple[Path_, type[BaseModel] | None]:
    """The error location as a document path (dropping the tag pydantic inserts for a
    discriminated union, e.g. the 'modbus' in ('devices', 0, 'modbus', 'tags')), and the model
    that holds the last element (None when unknown)."""
    path: list[str | int] = []
    node: Any = data
    tp: Any = LineConfig
    holder: type[BaseModel] | None = None
    for i, element in enumerate(loc):
        kind = _unwrap(tp, node)
        if isinstance(kind, _Union):
            if isinstance(element, str) and element in kind.tags:
                tp = kind.tags[element]
                continue  # the union's tag, not a key of the document
            kind = _unwrap(_pick(kind, node), node)
        if kind is None and isinstance(node, dict) and isinstance(element, str) and element not in node:
            nxt = loc[i + 1] if i + 1 < len(loc) else None
            if nxt is None or nxt in node:  # unknown type: an inserted tag if the rest fits the data
                if element in {v for v in node.values() if isinstance(v, str)}:
                    continue
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            holder = kind
            field = kind.model_fields.get(element) if isinstance(element, str) else None
            tp = _field_type(field) if field else None
        elif isinstance(kind, tuple) and kind[0] == "list":
            holder = None
            tp = kind[1]
        else:
            holder, tp = None, None
        path.append(element)
        node = _child(node, element)
    return tuple(path), holder


def _missing_hint(model: type[BaseModel] | None, name: Any) -> str:
    """The choices of a missing Literal field, else its description when it is short."""
    if model is None or not isinstance(name, str) or name not in model.model_fields:
        return ""
    field = model.model_fields[name]
    tp = _field_type(field)
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    if get_origin(tp) is Literal:
        return "; one of: " + ", ".join(str(c) for c in get_args(tp))
    if field.description and len(field.description) <= 80:
        return f" ({field.description})"
    return ""


def _union_tags_hint(loc: tuple[Any, ...], data: Any) -> str:
    tp: Any = LineConfig
    node: Any = data
    for element in loc:
        kind = _unwrap(tp, node)
        if isinstance(kind, _Union):
            kind = _unwrap(_pick(kind, node), node)
        if isinstance(kind, type) and issubclass(kind, BaseModel) and isinstance(element, str):
            field = kind.model_fields.get(element)
            tp = _field_type(field) if field else None
        elif isinstance(kind, tuple):
            tp = kind[1]
        else:
            return ""
        node = _child(node, element)
    kind = _unwrap(tp, node)
    return f"; one of: {', '.join(kind.tags)}" if isinstance(kind, _Union) and kind.tags else ""


def _field_type(field: FieldInfo) -> Any:
    if field.discriminator is not None:
        return Annotated[field.annotation, field]
    return field.annotation


def _child(node: Any, element: Any) -> Any:
    try:
        return node[element]
    except (KeyError, IndexError, TypeError):
        return None


def _pick(kind: _Union, node: Any) -> Any:
    if kind.discriminator and isinstance(node, dict):
        return kind.tags.get(node.get(kind.discriminator))
    return None


def _unwrap(tp: Any, node: Any) -> Any:
    """A type reduced to a model class, ("list", item type), a _Union, or None."""
    discriminator: str | None = None
    while tp is not None:
        origin = get_origin(tp)
        if origin is Annotated:
            base, *meta = get_args(tp)
            for m in meta:
                if isinstance(m, FieldInfo) and isinstance(m.discriminator, str):
                    discriminator = m.discriminator
            tp = base
        elif origin is Union or origin is types.UnionType:
            members = [a for a in get_args(tp) if a is not type(None)]
            if len(members) == 1:
                tp = members[0]
                continue
            models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
            tags: dict[str, type[BaseModel]] = {}
            if discriminator:
                for m in models:
                    field = m.model_fields.get(discriminator)
                    if field is not None and get_origin(field.annotation) is Literal:
                        for value in get_args(field.annotation):
                            tags[str(value)] = m
            if tags:
                return _Union(discriminator, tags)
            return models[0] if len(models) == 1 else None
        elif origin in (list, tuple, set, frozenset):
            args = get_args(tp)
            return ("list", args[0] if args else None)
        elif isinstance(tp, type) and issubclass(tp, BaseModel):
            # A discriminated "union" of one model (one protocol registered) is still tagged by pydantic.
            field = tp.model_fields.get(discriminator) if discriminator else None
            if field is not None and get_origin(field.annotation) is Literal:
                return _Union(discriminator, {str(v): tp for v in get_args(field.annotation)})
            return tp
        else:
            return None
    return None

