"""A corpus of config mistakes, one folder each (Telegraf style): `tests/cases/<name>/line.yaml` and
`expected.err` holding `LINE: field: fragment of the message` (field empty for a whole-file or
syntax error). `linetap validate` must exit 2 and report that line, that field, that message.
Adding a case is adding a folder (files the config refers to may sit beside it)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from linetap.agent.cli import app

CASES = Path(__file__).parent / "cases"
NAMES = sorted(p.name for p in CASES.iterdir() if (p / "line.yaml").exists())


def test_the_corpus_is_large() -> None:
    assert len(NAMES) >= 40


@pytest.mark.parametrize("name", NAMES)
def test_case(name: str, monkeypatch) -> None:
    folder = CASES / name
    monkeypatch.chdir(folder)
    monkeypatch.delenv("LINETAP_CASE_UNSET_VAR", raising=False)
    line, field, fragment = (folder / "expected.err").read_text().strip().split(": ", 2)
    result = CliRunner().invoke(app, ["validate", "line.yaml"])
    out = result.stderr if result.stderr else result.output
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    start = f"line.yaml:{line}: {field}: " if field else f"line.yaml:{line}: "
    hits = [x for x in out.splitlines() if x.startswith(start)]
    assert hits, f"no error at line {line}, field {field!r}:\n{out}"
    assert any(fragment in x for x in hits), f"{fragment!r} not in:\n{out}"
