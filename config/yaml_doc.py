"""YAML text -> plain dicts/lists/scalars, and the 1-based line of every key and sequence item.

ruamel.yaml's round-trip loader keeps the line of every mapping key and sequence item and refuses
duplicate keys; its errors become `ConfigIssue`s pointing at the line.
"""

from __future__ import annotations

import re
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.constructor import DuplicateKeyError, RoundTripConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.scalarbool import ScalarBoolean

from .issues import ConfigError, ConfigIssue, Path_, describe, format_path

# Aliases (`*name`) are shared by ruamel.yaml, but every use becomes a copy in the plain data (and
# in pydantic): a few hundred bytes of nested aliases ("billion laughs") would expand to billions.
MAX_ALIAS_NODES = 50_000
MAX_DEPTH = 64

# what a standard tag asks of its value, for `!!int x`
_TAG_WANTS = {"int": "a whole number", "float": "a number", "bool": "true or false", "null": "empty",
              "timestamp": "a date/time", "binary": "base64 data", "str": "text", "map": "a mapping",
              "seq": "a list", "set": "a mapping of keys", "omap": "a list of one-key mappings",
              "pairs": "a list of one-key mappings"}


class _TagValueError(MarkedYAMLError):
    """A value that does not fit its explicit tag (`!!int x`), with the node's position."""


class _Constructor(RoundTripConstructor):
    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, KeyError, TypeError, OverflowError, IndexError, AttributeError) as exc:
            raise _TagValueError(problem=_tag_message(node, exc), problem_mark=node.start_mark) from None


def _tag_message(node: Any, exc: BaseException) -> str:
    tag = str(getattr(node, "tag", "") or "")
    short = tag.replace("tag:yaml.org,2002:", "!!")
    value = node.value if isinstance(getattr(node, "value", None), str) else None
    wants = _TAG_WANTS.get(tag.rsplit(":", 1)[-1]) if short.startswith("!!") else None
    shown = f"{value!r}" if value is not None else "the value"
    if wants:
        return f"{shown} is not {wants}, as its tag {short} says; remove the tag or fix the value"
    return f"{shown} cannot be read with the tag {short}; remove the tag"


def parse_yaml(text: str, file: str) -> CommentedMap:
    yaml = YAML(typ="rt")
    yaml.Constructor = _Constructor
    yaml.allow_duplicate_keys = False
    try:
        document = yaml.load(text)
    except DuplicateKeyError as exc:
        raise ConfigError([_duplicate_key_issue(exc, text, file)]) from None
    except MarkedYAMLError as exc:
        raise ConfigError([_syntax_issue(exc, text, file)]) from None
    except YAMLError as exc:  # pragma: no cover - unmarked errors are rare
        raise ConfigError([ConfigIssue(file, None, "", f"not readable as YAML: {exc}")]) from None
    except RecursionError:
        raise ConfigError([ConfigIssue(file, None, "", f"the YAML is nested too deeply (more than {MAX_DEPTH} "
                                       "levels of brackets or indentation)")]) from None
    if document is None:
        raise ConfigError([ConfigIssue(file, 1, "", "the file is empty; a line config needs at least "
                                       "`agent:` and `devices:`")])
    if not isinstance(document, CommentedMap):
        kind = describe(document)
        raise ConfigError([ConfigIssue(file, 1, "", f"the top level must be a mapping of `key: value` lines "
                                       f"(agent:, mqtt:, buffer:, devices: ...), not {kind}")])
    return document


def _line_text(text: str, line: int | None) -> str:
    """The (stripped, shortened) text of a 1-based line, for quoting in a message."""
    lines = text.splitlines()
    if line is None or not 1 <= line <= len(lines):
        return ""
    shown = lines[line - 1].replace("\t", "<tab>").strip()
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _syntax_issue(exc: MarkedYAMLError, text: str, file: str) -> ConfigIssue:
    """A parser error as a sentence a process engineer understands, quoting the line."""
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else None
    problem = exc.problem or exc.context or "invalid YAML"
    context = exc.context or ""
    began = exc.context_mark.line + 1 if exc.context_mark is not None else None
    if isinstance(exc, _TagValueError):
        return ConfigIssue(file, line, "", problem)
    quoted = _line_text(text, line)
    near = f" in `{quoted}`" if quoted else ""
    if "'\\t'" in problem:
        message = f"a tab character{near}: YAML indents with spaces only, replace the tab with spaces"
    elif "mapping values are not allowed" in problem:
        message = (f"a `:` where no key can start{near}: check that this line is indented like its neighbours "
                   "(and that the line above has its `key:`), and put a value that contains ': ' in quotes")
    elif m := re.search(r"found character '(.)' that cannot start any token", problem):
        message = f"a value cannot start with {m.group(1)!r}{near}: put the value in quotes"
    elif "quoted scalar" in context:
        line = began or line
        message = f"a quote opened at line {began} is never closed" + (
            f" (`{_line_text(text, began)}`)" if began else "")
    elif m := re.search(r"expected ',' or '([\]}])'", problem):
        opener = "[" if m.group(1) == "]" else "{"
        line = began or line
        message = (f"the `{opener}` opened at line {began} is not closed with `{m.group(1)}`"
                   f" (`{_line_text(text, began)}`), or two items lack a `,` between them")
    elif "expected <block end>" in problem and re.search(r"found '[\]}]'", problem):
        message = f"a closing bracket without its opening one{near}"
    elif "expected <block end>" in problem or "expected <block" in problem:
        message = (f"this line does not line up with the ones above{near}: a key of the same mapping must start "
                   "in the same column, list items (`- `) in the same column too")
    elif "while scanning an alias" in context or "while scanning an anchor" in context:
        sign = "*" if "alias" in context else "&"
        message = f"`{sign}` must be followed by a name{near} (or put the value in quotes)"
    elif m := re.search(r"found undefined alias '([^']*)'", problem):
        message = f"`*{m.group(1)}` refers to an anchor `&{m.group(1)}` that is not defined before it"
    elif "expected a single document" in problem or "but found another document" in str(exc):
        message = "the file holds more than one YAML document (a `---` line): one line config per file"
    elif "expected a mapping or list of mappings for merging" in problem or "merging" in problem:
        message = f"`<<:` merges a mapping: write `<<: *name` where `&name` marks a mapping{near}"
    elif "expected '<document start>'" in problem:
        message = (f"this line does not belong to the mapping above{near}: check its indentation and that the "
                   "line above ends its value (a key of the top level starts in column 1)")
    elif "could not find expected ':'" in problem:
        line = began or line
        message = (f"a line without `key: value`{' in `' + _line_text(text, line) + '`' if line else ''}: add the "
                   "`:` after the key, or put the text in quotes")
    elif m := re.search(r"expected the node content, but found '([^']*)'", problem):
        found = {"<block end>": "the end of the block", "<stream end>": "the end of the file"}.get(
            m.group(1), f"`{m.group(1)}`")
        message = f"a value is missing{near}: found {found} where a value should be; put the value in quotes"
    else:
        problem = re.sub(r"'?<(block|flow) (mapping|sequence) (start|end)>'?", "an indentation change", problem)
        problem = problem.replace("'<stream end>'", "the end of the file").replace("<block end>", "the end "
                                                                                   "of the block")
        message = f"not valid YAML{near}: {problem}"
        if exc.context and exc.problem and began is not None:
            message += f" ({exc.context} started at line {began})"
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


def to_plain(document: CommentedMap, file: str = "<config>", text: str = "") -> tuple[Any, dict[Path_, int]]:
    """Plain dicts/lists/scalars for pydantic, and the 1-based line of every key and item.

    Refuses (ConfigError, every issue found): aliases that expand to more than MAX_ALIAS_NODES
    nodes, an alias inside itself, nesting deeper than MAX_DEPTH, keys that are not names, tags
    that are not YAML's own (`!foo`)."""
    lines: dict[Path_, int] = {(): document.lc.line + 1}
    issues: list[ConfigIssue] = []
    converted: set[int] = set()  # containers seen once: seeing one again is an alias use
    expanded = 0  # nodes copied through aliases

    class _Stop(Exception):
        pass

    def convert(node: Any, path: Path_, line: int, active: tuple[int, ...], alias: Any) -> Any:
        # alias: (path, line) of the outermost alias use this node is copied through, else None
        nonlocal expanded
        if alias:
            expanded += 1
            if expanded > MAX_ALIAS_NODES:
                issues.append(ConfigIssue(file, alias[1], format_path(alias[0]),
                                          f"YAML aliases expand to more than {MAX_ALIAS_NODES} nodes: a `*name` "
                                          "repeats a large or nested `&name`; write the values out or use fewer "
                                          "aliases"))
                raise _Stop
        if isinstance(node, CommentedMap | CommentedSeq):
            if id(node) in active:
                issues.append(ConfigIssue(file, line, format_path(path),
                                          "a YAML alias `*name` is used inside its own `&name`: it would never end"))
                raise _Stop
            if len(active) >= MAX_DEPTH:
                issues.append(ConfigIssue(file, line, format_path(path),
                                          f"nested more than {MAX_DEPTH} levels deep"))
                raise _Stop
            if not alias and id(node) in converted:
                alias = (path, line)
            converted.add(id(node))
            active = (*active, id(node))
            _check_tag(node, path, line)
        if isinstance(node, CommentedMap):
            out = {}
            for key, value in node.items():
                try:
                    key_line = node.lc.key(key)[0] + 1
                except (KeyError, TypeError):  # merged in from an anchor (`<<: *x`)
                    key_line = line
                key = _scalar(key)
                if not isinstance(key, str):
                    issues.append(ConfigIssue(file, key_line, format_path(path), _bad_key(key, text, key_line)))
                    continue
                lines[(*path, key)] = key_line
                out[key] = convert(value, (*path, key), key_line, active, alias)
            return out
        if isinstance(node, CommentedSeq):
            out_list = []
            for index, value in enumerate(node):
                try:
                    item_line = node.lc.item(index)[0] + 1
                except (KeyError, TypeError):
                    item_line = line
                lines[(*path, index)] = item_line
                out_list.append(convert(value, (*path, index), item_line, active, alias))
            return out_list
        if isinstance(node, TaggedScalar):
            issues.append(ConfigIssue(file, line, format_path(path),
                                      f"unknown YAML tag {_tag_name(node)} on {node.value!r}: remove the tag"))
            return node.value
        if isinstance(node, bytes):
            issues.append(ConfigIssue(file, line, format_path(path), "binary data (!!binary) has no use in a line "
                                      "config: remove the tag"))
            return None
        return _scalar(node)

    def _check_tag(node: Any, path: Path_, line: int) -> None:
        tag = _tag_name(node)
        if tag and not tag.startswith(("tag:yaml.org,2002:", "!!")):
            issues.append(ConfigIssue(file, line, format_path(path), f"unknown YAML tag {tag}: remove the tag"))

    try:
        data = convert(document, (), lines[()], (), None)
    except _Stop:
        data = None
    if issues:
        raise ConfigError(issues)
    return data, lines


def _tag_name(node: Any) -> str:
    tag = getattr(node, "tag", None)
    value = getattr(tag, "value", tag)
    return value if isinstance(value, str) else ""


def _bad_key(key: Any, text: str, line: int) -> str:
    shown = describe(key) if not isinstance(key, tuple) else "a list"
    message = f"{shown} cannot be a key: keys are names, such as `address:`"
    source = _line_text(text, line)
    if isinstance(key, int | float) and "{" in source:
        message += (f" (in `{source}`, a comma inside {{ }} separates two entries: a decimal comma such as 0,1 "
                    "splits the value in two; write 0.1)")
    return message


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
