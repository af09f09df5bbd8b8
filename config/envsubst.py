"""`${VAR}` / `${VAR:-default}` substitution in string values, from the environment."""

from __future__ import annotations

import re
from typing import Any

from .issues import ConfigIssue, Path_, format_path

_VAR = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}|\$\{")


def substitute(node: Any, path: Path_, env: Any, lines: dict[Path_, int], file: str,
                issues: list[ConfigIssue]) -> Any:
    if isinstance(node, dict):
        return {k: substitute(v, (*path, k), env, lines, file, issues) for k, v in node.items()}
    if isinstance(node, list):
        return [substitute(v, (*path, i), env, lines, file, issues) for i, v in enumerate(node)]
    if not isinstance(node, str) or "${" not in node:
        return node

    def replace(match: re.Match[str]) -> str:
        whole = match.group(0)
        if whole == "$${":
            return "${"
        name = match.group(1)
        if name is None:
            issues.append(ConfigIssue(file, lines.get(path), format_path(path),
                                      "bad ${...} reference: write ${NAME} or ${NAME:-default}"))
            return whole
        value = env.get(name)
        if value:  # like the shell's ${NAME:-default}: an empty variable takes the default too
            return value
        if match.group(2) is not None:
            return match.group(3)
        if value is None:
            issues.append(ConfigIssue(file, lines.get(path), format_path(path),
                                      f"environment variable {name} is not set (set it, or write "
                                      f"${{{name}:-default}})"))
        return ""

    return _VAR.sub(replace, node)
