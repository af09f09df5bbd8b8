"""`linetap browse`: walk an OPC UA server's address space and print a tag-map skeleton (YAML).

The output is a `tags:` list (name, node id with its namespace URI, data type, unit) to paste into
an `opcua` device block; every node id is written as `nsu=<namespace uri>;...`, so the map keeps
working when the server renumbers its namespaces. Tag names are the browse path below the root,
joined with dots; rename them freely (the node id is what counts).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import re
from pathlib import Path
from typing import Any

import typer

from linetap.config.devices.opcua import OpcUaSecurity, parse_node_ref
from linetap.drivers.opcua.client import open_client, read_operation_limits

from .common import EXIT_CONFIG, EXIT_RUNTIME, app


async def browse_async(
    endpoint: str,
    root: str | None = None,
    depth: int = 6,
    *,
    security: OpcUaSecurity | dict[str, Any] | None = None,
    timeout: float = 5.0,
    max_variables: int = 20_000,
    include_standard: bool = False,
    name: str = "browse",
) -> str:
    """The YAML tag-map skeleton for the variables under `root` (default: the Objects folder).

    `root`: a node id (`ns=2;s=Line`, `nsu=...;s=...`) or a browse path from Objects
    (`Line/Sealer1`). `depth`: levels below root. Namespace 0 (the Server object and other
    standard nodes) is skipped unless `include_standard`. Raises DriverError subclasses.
    """
    from asyncua import ua

    from linetap.drivers import DriverError

    if isinstance(security, dict):
        security = OpcUaSecurity.model_validate(security)
    security = security or OpcUaSecurity()
    client = await open_client(name, endpoint, security, timeout)
    try:
        ns_array: list[str] = await client.get_namespace_array()
        limits = await read_operation_limits(client)
        per_read = limits.get("MaxNodesPerRead") or 500
        start = await _resolve_root(client, root, ns_array)
        variables: list[tuple[list[str], Any]] = []  # (path below root, node id)
        frontier: list[tuple[list[str], Any]] = [([], start)]
        seen = {start}
        for _level in range(max(depth, 0) + 1):
            next_frontier: list[tuple[list[str], Any]] = []
            for path, nodeid in frontier:
                refs = await client.get_node(nodeid).get_references(
                    refs=ua.ObjectIds.HierarchicalReferences, direction=ua.BrowseDirection.Forward,
                    nodeclassmask=ua.NodeClass.Object | ua.NodeClass.Variable)
                for ref in refs:
                    if ref.ReferenceTypeId == ua.NodeId(ua.ObjectIds.HasProperty):
                        continue
                    child = ua.NodeId(ref.NodeId.Identifier, ref.NodeId.NamespaceIndex, ref.NodeId.NodeIdType)
                    if child in seen or (child.NamespaceIndex == 0 and not include_standard):
                        continue
                    seen.add(child)
                    child_path = [*path, ref.BrowseName.Name]
                    if ref.NodeClass == ua.NodeClass.Variable:
                        variables.append((child_path, child))
                        if len(variables) >= max_variables:
                            break
                    next_frontier.append((child_path, child))  # variables may have child variables
                if len(variables) >= max_variables:
                    break
            frontier = next_frontier
            if not frontier or len(variables) >= max_variables:
                break
        nodeids = [n for _, n in variables]
        types: list[str] = []
        ranks: list[int] = []
        for i in range(0, len(nodeids), per_read):
            chunk = nodeids[i:i + per_read]
            dts = await client.uaclient.read_attributes(chunk, ua.AttributeIds.DataType)
            vrs = await client.uaclient.read_attributes(chunk, ua.AttributeIds.ValueRank)
            for dt, vr in zip(dts, vrs, strict=False):
                types.append(await _type_name(client, dt.Value.Value if dt.Value is not None else None))
                rank = vr.Value.Value if vr.Value is not None else -1
                ranks.append(rank if isinstance(rank, int) else -1)
        units = await _units(client, nodeids, limits)
    except DriverError:
        raise
    except Exception as exc:
        from linetap.drivers import DeviceUnreachable
        from linetap.drivers.opcua.errors import describe_error

        raise DeviceUnreachable(f"browsing {endpoint}: {describe_error(exc, timeout)}") from None
    finally:
        from linetap.drivers.opcua.client import quiet_disconnect

        await quiet_disconnect(client)
    return _yaml(endpoint, root, depth, ns_array, variables, types, ranks, units)


def browse(endpoint: str, root: str | None = None, depth: int = 6, **kwargs: Any) -> str:
    """Synchronous `browse_async` (for the command line)."""
    return asyncio.run(browse_async(endpoint, root, depth, **kwargs))


async def _resolve_root(client, root: str | None, ns_array: list[str]):
    from asyncua import ua

    from linetap.drivers import DeviceConfigError

    if root is None or root.strip() in ("", "/", "Objects", "/Objects"):
        return ua.NodeId(ua.ObjectIds.ObjectsFolder)
    try:
        kind, ref = parse_node_ref(root)
    except ValueError as err:
        raise DeviceConfigError(f"root {root!r}: {err}") from None
    if kind == "nodeid":
        uri = getattr(ref, "NamespaceUri", None)
        if uri:
            if uri not in ns_array:
                raise DeviceConfigError(f"root {root!r}: namespace {uri} is not on the server")
            return ua.NodeId(ref.Identifier, ns_array.index(uri), ref.NodeIdType)
        return ua.NodeId(ref.Identifier, ref.NamespaceIndex, ref.NodeIdType)
    current = ua.NodeId(ua.ObjectIds.ObjectsFolder)
    from linetap.drivers.opcua.identity import ambiguity, path_text

    for k, (ns, name) in enumerate(ref, 1):
        children = await client.get_node(current).get_children_descriptions()
        hits = [c for c in children if c.BrowseName.Name == name and (ns is None or
                                                                      c.BrowseName.NamespaceIndex == ns)]
        match = [c.NodeId for c in hits]
        text = ambiguity(path_text(ref, k), (c.BrowseName.NamespaceIndex for c in hits), ns_array)
        if text:
            raise DeviceConfigError(f"root {root!r}: {text}")
        if not match:
            raise DeviceConfigError(f"root {root!r}: no {name!r} under {current.to_string()}")
        current = ua.NodeId(match[0].Identifier, match[0].NamespaceIndex, match[0].NodeIdType)
    return current


_TYPE_CACHE: dict[Any, str] = {}


async def _type_name(client, dtype) -> str:
    from asyncua import ua

    if dtype is None:
        return "Unknown"
    if dtype.NamespaceIndex == 0 and isinstance(dtype.Identifier, int):
        return ua.ObjectIdNames.get(dtype.Identifier, f"i={dtype.Identifier}")
    key = dtype.to_string()
    if key not in _TYPE_CACHE:
        try:
            _TYPE_CACHE[key] = (await client.get_node(dtype).read_browse_name()).Name
        except Exception:
            _TYPE_CACHE[key] = key
    return _TYPE_CACHE[key]


async def _units(client, nodeids: list, limits: dict[str, int]) -> list[str | None]:
    from asyncua import ua

    out: list[str | None] = [None] * len(nodeids)
    per_call = limits.get("MaxNodesPerTranslateBrowsePathsToNodeIds") or 500
    per_read = limits.get("MaxNodesPerRead") or 500
    found: list[tuple[int, Any]] = []
    for start in range(0, len(nodeids), per_call):
        chunk = nodeids[start:start + per_call]
        paths = [ua.BrowsePath(StartingNode=n, RelativePath=ua.RelativePath(Elements=[ua.RelativePathElement(
            ReferenceTypeId=ua.NodeId(ua.ObjectIds.HasProperty), IsInverse=False, IncludeSubtypes=True,
            TargetName=ua.QualifiedName("EngineeringUnits", 0))])) for n in chunk]
        results = await client.uaclient.translate_browsepaths_to_nodeids(paths)
        for k, res in enumerate(results):
            if res.StatusCode.is_good() and res.Targets:
                t = res.Targets[0].TargetId
                found.append((start + k, ua.NodeId(t.Identifier, t.NamespaceIndex, t.NodeIdType)))
    for start in range(0, len(found), per_read):
        chunk = found[start:start + per_read]
        values = await client.uaclient.read_attributes([n for _, n in chunk], ua.AttributeIds.Value)
        for (i, _), dv in zip(chunk, values, strict=False):
            eu = dv.Value.Value if dv.Value is not None else None
            text = getattr(getattr(eu, "DisplayName", None), "Text", None) if eu is not None else None
            out[i] = text or None
    return out


def _node_string(nodeid, ns_array: list[str]) -> str:
    """`nsu=<uri>;s=...` (namespace 0: `i=...` as is)."""
    text = nodeid.to_string()
    if nodeid.NamespaceIndex == 0:
        return text
    ident = text.split(";", 1)[1] if text.startswith("ns=") else text
    return f"nsu={ns_array[nodeid.NamespaceIndex]};{ident}"


def _tag_name(path: list[str], used: set[str]) -> str:
    base = ".".join(re.sub(r"[^A-Za-z0-9_\-]+", "_", p).strip("_") or "x" for p in path) or "value"
    name, k = base, 2
    while name in used:
        name, k = f"{base}_{k}", k + 1
    used.add(name)
    return name


def _yaml(endpoint: str, root: str | None, depth: int, ns_array: list[str], variables, types, ranks,
          units) -> str:
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# linetap browse {endpoint} (root {root or 'Objects'}, depth {depth}) at {now}",
        f"# {len(variables)} variable(s). Paste under an opcua device, e.g.:",
        "#   devices:",
        "#     - protocol: opcua",
        "#       name: my-device",
        f"#       endpoint: {endpoint}",
        "#       tags: ...   (the list below)",
        "# Tag names follow the browse path; rename them as you like (the node id is what counts).",
        "tags:",
    ]
    if not variables:
        lines[-1] = "tags: []"
    from linetap.drivers.opcua.identity import duplicate_paths

    dups = duplicate_paths(variables)
    if dups:
        first, idx = next(iter(dups.items()))
        where = " and ".join(f"{ns_array[i]} ({i})" for i in idx)
        warn = [f"# WARNING: {len(dups)} browse path(s) exist in more than one namespace, e.g. {first} in {where};",
                "# keep the nsu= node ids below: a browse path without a namespace would be ambiguous."]
        lines[-1:-1] = warn
    used: set[str] = set()
    for (path, nodeid), dtype, rank, unit in zip(variables, types, ranks, units, strict=False):
        lines.append(f"  - name: {_tag_name(path, used)}")
        lines.append(f"    node: {json.dumps(_node_string(nodeid, ns_array), ensure_ascii=False)}")
        lines.append(f"    data_type: {json.dumps(dtype + ('[]' if rank >= 1 else ''))}")
        if unit:
            lines.append(f"    unit: {json.dumps(unit, ensure_ascii=False)}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------

@app.command("browse")
def browse_command(
    endpoint: str = typer.Argument(..., help="opc.tcp://host:port"),
    root: str | None = typer.Option(None, help="start node: node id or path from Objects (e.g. Line/Sealer1)"),
    depth: int = typer.Option(6, min=0, max=100, help="levels below the root"),
    policy: str = typer.Option("None", help="None, Basic256Sha256, Aes128_Sha256_RsaOaep, Aes256_Sha256_RsaPss"),
    mode: str | None = typer.Option(None, help="Sign or SignAndEncrypt (default with a policy)"),
    cert: Path | None = typer.Option(None, help="client certificate"),
    key: Path | None = typer.Option(None, help="client private key"),
    server_cert: Path | None = typer.Option(None, help="trusted server certificate"),
    trust_dir: Path | None = typer.Option(None, help="folder of trusted server certificates"),
    username: str | None = typer.Option(None, help="user name (password from $LINETAP_OPCUA_PASSWORD)"),
) -> None:
    """Print the variables of an OPC UA server as a YAML tag map for an opcua device."""
    import os

    from pydantic import ValidationError

    from linetap.drivers import DriverError

    if not re.match(r"^opc\.tcp://[^/:\s]+(:\d+)?(/.*)?$", endpoint):
        raise typer.BadParameter(f"{endpoint!r} is not an OPC UA endpoint; write it like opc.tcp://192.168.0.10:4840",
                                 param_hint="ENDPOINT")
    port_text = re.match(r"^opc\.tcp://[^/:]+:(\d+)", endpoint)
    if port_text and not 1 <= int(port_text.group(1)) <= 65535:
        raise typer.BadParameter("the port must be 1..65535", param_hint="ENDPOINT")
    for option, path in (("--cert", cert), ("--key", key), ("--server-cert", server_cert)):
        if path is not None and not path.is_file():
            raise typer.BadParameter(f"{path} {'is a folder' if path.is_dir() else 'does not exist'}",
                                     param_hint=option)
    if trust_dir is not None and not trust_dir.is_dir():
        raise typer.BadParameter(f"{trust_dir} is not a folder", param_hint="--trust-dir")
    security = {"policy": policy, "mode": mode, "certificate": cert, "private_key": key,
                "server_certificate": server_cert, "trust_dir": trust_dir, "username": username,
                "password": os.environ.get("LINETAP_OPCUA_PASSWORD") if username else None}
    try:
        typer.echo(browse(endpoint, root, depth,
                             security={k: v for k, v in security.items() if v is not None}), nl=False)
    except ValidationError as err:
        typer.echo(f"linetap browse: {err.errors()[0]['msg']}", err=True)
        raise typer.Exit(EXIT_CONFIG) from None
    except DriverError as err:
        typer.echo(f"linetap browse: {err}", err=True)
        raise typer.Exit(EXIT_RUNTIME) from None
