"""OPC UA node identity: a browse path must name one node, in one namespace.

Two namespaces on one server often hold the same browse names (a gateway aggregating two PLCs,
a vendor model beside the companion-spec model). A path segment without `idx:` that matches
children in more than one namespace is a configuration error, never a silent first pick: the
engineer sets `namespace:` on the device or uses an `nsu=` node id.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def ambiguity(path: str, namespaces: Iterable[int], ns_array: list[str], at: str | None = None) -> str | None:
    """The error text when the matches of `path` span more than one namespace index, else None.
    `at`: the first segment(s) where the namespaces diverge, when shorter than `path`."""
    idx = sorted(set(namespaces))
    if len(idx) <= 1:
        return None
    where = f" (from `{at}` on)" if at and at != path else ""
    named = [f"{ns_array[i] if i < len(ns_array) else '?'} ({i})" for i in idx]
    listed = ", ".join(named[:-1]) + f" and {named[-1]}"
    return (f"`{path}` exists in namespaces {listed}{where}: set `namespace:` on the device or use an `nsu=` "
            "node id (browse roots: `nsu=` or `<index>:Name` segments)")


def path_text(segments: list[tuple[int | None, str]], upto: int | None = None) -> str:
    """`Line/Sealer1/Temperature` for parsed browse-path segments (the first `upto`)."""
    segs = segments if upto is None else segments[:upto]
    return "/".join(name if ns is None else f"{ns}:{name}" for ns, name in segs)


def duplicate_paths(variables: list[tuple[list[str], Any]]) -> dict[str, list[int]]:
    """Browse paths (joined by `/`) that more than one namespace holds: path -> namespace indexes."""
    seen: dict[str, set[int]] = {}
    for path, nodeid in variables:
        seen.setdefault("/".join(path), set()).add(nodeid.NamespaceIndex)
    return {p: sorted(ns) for p, ns in seen.items() if len(ns) > 1}
