"""pydantic validation errors -> `ConfigIssue`s: the document path and line of the mistake, and a
message in plain words (the allowed keys, the choices, what was found)."""

from __future__ import annotations

import difflib
import re
import types
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from .issues import At, ConfigIssue, Path_, describe, format_path
from .models import LineConfig

_SECRET = re.compile(r"password|secret|token|key_file|private_key", re.IGNORECASE)
_PATTERNS = {
    r"^[^/#+\s]+$": "must not contain '/', '#', '+' or spaces (it is one level of the MQTT topic)",
    r"^[A-Za-z0-9_.\-]+$": "may contain only letters, digits, '_', '.' and '-'",
    r"^[A-Za-z0-9_\-]+$": "may contain only letters, digits, '_' and '-'",
}


def issue_from(err: dict[str, Any], data: Any, lines: dict[Path_, int], file: str) -> ConfigIssue:
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
        message = f"must be a mapping of `key: value` lines, not {describe(value)}"
    elif kind == "list_type":
        message = f"must be a list (one `- ` item per line), not {describe(value)}"
    elif kind == "too_short" and ctx.get("field_type") == "List":
        noun = str(path[-1]).rstrip("s") if path and isinstance(path[-1], str) else "item"
        n = ctx.get("min_length", 1)
        message = (f"needs at least {n} {noun}{'s' if n != 1 else ''}"
                   f"{' (the list is empty)' if not ctx.get('actual_length') else ''}")
    elif kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        message = _PATTERNS.get(pattern, f"must match the pattern {pattern}") + _got(path, value)
    elif kind == "value_error" and isinstance(ctx.get("error"), At):
        located: At = ctx["error"]
        message = str(located)
        path = (*path, *located.loc)
        if located.first is not None and (first := line_of((*path[: len(path) - len(located.loc)],
                                                             *located.first), lines)):
            message += f" (first at line {first})"
    elif kind in ("value_error", "assertion_error"):
        message = re.sub(r"^(Value error|Assertion failed), ", "", message)
        if isinstance(value, dict):
            path, message = _point_into(path, message, data, lines)
        elif not _mentions(message, value):
            message += _got(path, value)
    elif (plain := _plain_words(kind, ctx, value)) is not None:
        message = plain + _got(path, value) + _hint(kind, ctx, value)
    else:
        message = re.sub(r"^(Input|String|List|Value|Dictionary) should( be| have)?", _must, message)
        if not _mentions(message, value):
            message += _got(path, value)
    return ConfigIssue(file, line_of(path, lines), format_path(path), message)


def _plain_words(kind: str, ctx: dict[str, Any], value: Any) -> str | None:
    """pydantic's wording for the common mistakes, in words a process engineer uses."""
    if kind in ("float_parsing", "float_type", "finite_number"):
        return "must be a number, e.g. 0.5" if kind != "finite_number" else "must be a finite number"
    if kind in ("int_parsing", "int_type", "int_from_float", "int_parsing_size"):
        return "must be a whole number, e.g. 10"
    if kind in ("bool_parsing", "bool_type"):
        return "must be true or false"
    if kind == "string_type":
        return "must be text"
    if kind == "literal_error":
        return f"must be one of: {str(ctx.get('expected', '')).replace(' or ', ', ')}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        words = {"greater_than_equal": "at least", "greater_than": "more than", "less_than_equal": "at most",
                 "less_than": "less than"}[kind]
        bound = next(iter(ctx.values()), "?")
        return f"must be {words} {bound}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters long"
    if kind in ("too_long",):
        return f"may have at most {ctx.get('max_length')} items"
    if kind in ("none_required",):
        return "must be left empty"
    return None


def _hint(kind: str, ctx: dict[str, Any], value: Any) -> str:
    if kind == "float_parsing" and isinstance(value, str) and re.fullmatch(r"\s*-?\d+,\d+\s*", value):
        return "; write decimals with a point: " + value.strip().replace(",", ".")
    if kind == "literal_error" and isinstance(value, str):
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
        if close:
            return f"; did you mean {close[0]!r}?"
    if kind == "string_type" and isinstance(value, int | float) and not isinstance(value, bool):
        return "; put it in quotes to use it as text"
    return ""


def _must(match: re.Match[str]) -> str:
    verb = match.group(2) or ""
    return {" be": "must be", " have": "must have"}.get(verb, "must")


def _mentions(message: str, value: Any) -> bool:
    return isinstance(value, str) and repr(value) in message


def _got(path: Path_, value: Any) -> str:
    if any(isinstance(p, str) and _SECRET.search(p) for p in path):
        return ""
    if isinstance(value, str) and re.search(r"://[^/@]*@", value):
        return ""  # a URL with user:password@
    if value is None:
        return " (the value is empty)"
    if isinstance(value, str | int | float | bool):
        text = repr(value)
        return f" (got {text if len(text) <= 60 else text[:57] + '...'})"
    return f" (got {describe(value)})"



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


def line_of(path: Path_, lines: dict[Path_, int]) -> int | None:
    for n in range(len(path), -1, -1):
        if path[:n] in lines:
            return lines[path[:n]]
    return None




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

