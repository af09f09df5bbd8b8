"""What the driver learns about each tag's node at connect: its NodeId (a node id, or a browse path
walked from the Objects folder), its DataType and ValueRank (for the type check of every value),
and its engineering unit (the EUInformation property)."""

from __future__ import annotations

from typing import Any

import structlog

from linetap.config.devices.opcua import OpcUaDeviceConfig, parse_node_ref

from ..base import DeviceConfigError
from .client import chunks
from .errors import describe_error
from .types import TypeGuard, expected_kind

log = structlog.get_logger("linetap.drivers.opcua")


async def resolve_nodes(client, cfg: OpcUaDeviceConfig, where: str) -> tuple[list[Any], dict[int, str]]:
    """(ua.NodeId per tag, None: unresolved; tag index -> why it is not resolved)."""
    from asyncua import ua

    ns_array: list[str] = await client.get_namespace_array()
    nodeids: list[Any] = [None] * len(cfg.tags)
    resolve_errors: dict[int, str] = {}
    default_ns = None
    if cfg.namespace is not None:
        if cfg.namespace not in ns_array:
            raise DeviceConfigError(f"{where}: namespace {cfg.namespace!r} is not on the server "
                                    f"(it has {', '.join(ns_array)})")
        default_ns = ns_array.index(cfg.namespace)
    children_cache: dict[Any, list] = {}
    for i, tag in enumerate(cfg.tags):
        kind, ref = parse_node_ref(tag.node)
        if kind == "nodeid":
            uri = getattr(ref, "NamespaceUri", None)
            if uri:
                if uri not in ns_array:
                    resolve_errors[i] = f"BadNodeIdUnknown: namespace {uri} not on the server"
                    continue
                ref = ua.NodeId(ref.Identifier, ns_array.index(uri), ref.NodeIdType)
            elif isinstance(ref, ua.ExpandedNodeId):
                ref = ua.NodeId(ref.Identifier, ref.NamespaceIndex, ref.NodeIdType)
            nodeids[i] = ref
        else:
            nodeid, err = await _walk_path(client, ref, default_ns, children_cache, ns_array, where)
            if err:
                resolve_errors[i] = f"BadNoMatch: browse path {tag.node!r}: {err}"
            nodeids[i] = nodeid
    return nodeids, resolve_errors


async def read_datatypes(client, nodeids: list[Any], per_call: int) -> TypeGuard:
    """Each node's DataType and ValueRank (Read), for the type check of every value."""
    from asyncua import ua

    types = TypeGuard(len(nodeids))
    todo = [i for i, nid in enumerate(nodeids) if nid is not None]
    for chunk in chunks(todo, per_call):
        nodes = [nodeids[i] for i in chunk]
        try:
            dts = await client.uaclient.read_attributes(nodes, ua.AttributeIds.DataType)
            vrs = await client.uaclient.read_attributes(nodes, ua.AttributeIds.ValueRank)
        except ua.UaStatusCodeError:
            continue  # held to the first value seen
        for i, dt, vr in zip(chunk, dts, vrs, strict=False):
            dtype = dt.Value.Value if dt.Value is not None and dt.StatusCode.is_good() else None
            rank = vr.Value.Value if vr.Value is not None and vr.StatusCode.is_good() else None
            types.declared[i] = expected_kind(dtype, rank if isinstance(rank, int) else None)
    return types


async def _walk_path(client, segments, default_ns, cache, ns_array, where: str) -> tuple[Any, str | None]:
    from asyncua import ua

    from .identity import ambiguity, path_text

    current = ua.NodeId(ua.ObjectIds.ObjectsFolder)
    for k, (ns, name) in enumerate(segments, 1):
        ns = default_ns if ns is None else ns
        children = cache.get(current)
        if children is None:
            refs = await client.get_node(current).get_children_descriptions()
            children = [(r.BrowseName.NamespaceIndex, r.BrowseName.Name, r.NodeId) for r in refs]
            cache[current] = children
        hits = [(cns, nid) for cns, cname, nid in children if cname == name and (ns is None or cns == ns)]
        matches = [nid for _, nid in hits]
        if ns is None:
            text = ambiguity(path_text(segments), (cns for cns, _ in hits), ns_array, at=path_text(segments, k))
            if text:
                raise DeviceConfigError(f"{where}: {text}")
        if not matches:
            return None, f"no child {name!r} under {current.to_string()}"
        current = matches[0]
    return current, None


async def read_units(client, tags: list, nodeids: list[Any], translate_per_call: int, read_per_call: int,
                     device: str) -> dict[str, str]:
    """EUInformation.DisplayName (or Description) for tags without a configured unit: tag name -> unit."""
    from asyncua import ua

    units: dict[str, str] = {}
    todo = [i for i, t in enumerate(tags) if t.unit is None and nodeids[i] is not None]
    if not todo:
        return units
    eu_ids: list[tuple[int, Any]] = []
    for chunk in chunks(todo, translate_per_call):
        paths = []
        for i in chunk:
            rel = ua.RelativePath(Elements=[ua.RelativePathElement(
                ReferenceTypeId=ua.NodeId(ua.ObjectIds.HasProperty), IsInverse=False, IncludeSubtypes=True,
                TargetName=ua.QualifiedName("EngineeringUnits", 0))])
            paths.append(ua.BrowsePath(StartingNode=nodeids[i], RelativePath=rel))
        try:
            results = await client.uaclient.translate_browsepaths_to_nodeids(paths)
        except Exception as exc:
            log.info("opcua units not read", device=device, cause=describe_error(exc))
            return units
        for i, res in zip(chunk, results, strict=False):
            if res.StatusCode.is_good() and res.Targets:
                eu_ids.append((i, res.Targets[0].TargetId))
    for chunk in chunks(eu_ids, read_per_call):
        nodeids_eu = [ua.NodeId(t.Identifier, t.NamespaceIndex, t.NodeIdType) for _, t in chunk]
        try:
            values = await client.uaclient.read_attributes(nodeids_eu, ua.AttributeIds.Value)
        except Exception:
            return units
        for (i, _), dv in zip(chunk, values, strict=False):
            eu = dv.Value.Value if dv.Value is not None else None
            if eu is None:
                continue
            text = getattr(getattr(eu, "DisplayName", None), "Text", None) or \
                getattr(getattr(eu, "Description", None), "Text", None)
            if text:
                units[tags[i].name] = text
    return units
