"""YAML text -> plain dicts/lists/scalars, and the 1-based line of every key and sequence item.

ruamel.yaml's round-trip loader keeps the line of every mapping key and sequence item and refuses
duplicate keys; its errors become `ConfigIssue`s pointing at the line.
"""

from __future__ import annotations

import re
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.scalarbool import ScalarBoolean

from .issues import ConfigError, ConfigIssue, Path_, describe, format_path


def parse_yaml(text: str, file: str) -> CommentedMap:
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
        kind = describe(document)
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
    field = format_path((*_mapping_path(text, exc.context_mark), key)) if exc.context_mark else ""
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


def to_plain(document: CommentedMap) -> tuple[Any, dict[Path_, int]]:
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
