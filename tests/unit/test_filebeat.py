"""deploy/filebeat.yml decodes exactly the lines the service writes: its unit's journal, the
ndjson parser putting ECS fields at the root, dotted keys expanded, nothing renamed."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import structlog

if TYPE_CHECKING:
    import io
    from collections.abc import Callable

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
FILEBEAT = DEPLOY / "filebeat.yml"
# Filebeat processors that would move or rename what the service already names in ECS.
RENAMING = ("decode_json_fields", "rename", "convert", "copy_fields", "dissect", "timestamp")


def yaml_lines() -> list[str]:
    """filebeat.yml without comments and blank lines (no YAML library needed)."""
    stripped = (re.sub(r"\s+#.*$|^\s*#.*$", "", line) for line in FILEBEAT.read_text().splitlines())
    return [line for line in stripped if line.strip()]


def ndjson_options() -> dict[str, Any]:
    """The options of the ndjson parser: the lines indented under `- ndjson:`."""
    found = yaml_lines()
    start = next(i for i, line in enumerate(found) if line.strip() == "- ndjson:")
    indent = len(found[start]) - len(found[start].lstrip())
    options: dict[str, Any] = {}
    for line in found[start + 1 :]:
        if len(line) - len(line.lstrip()) <= indent:
            break
        key, _, value = line.strip().partition(":")
        options[key] = json.loads(value.strip())
    return options


@pytest.fixture(name="line")
def fixture_line(log_setup: Callable[..., io.StringIO]) -> dict[str, Any]:
    """One line the service writes under systemd (stdout is no terminal), parsed."""
    out = log_setup("info", "auto")
    structlog.get_logger("component.sync").info("sync.done", user="alice@example.test", upserts=1)
    return dict(json.loads(out.getvalue()))


def test_filebeat_reads_the_units_journal() -> None:
    """The journald input reads the shipped unit's lines, and only those."""
    assert (DEPLOY / "http-roster-admin.service").exists()
    text = "\n".join(yaml_lines())
    assert "- type: journald" in text
    assert "- _SYSTEMD_UNIT=http-roster-admin.service" in text


def test_ndjson_parser_matches_the_lines_written(line: dict[str, Any]) -> None:
    """The service's lines hold ECS fields at the root, some dotted: the parser keeps them at
    the root, lets them replace the input's own, and expands the dotted ones."""
    options = ndjson_options()
    assert {"@timestamp", "message", "log.level"} <= line.keys()
    assert options["target"] == ""
    assert options["overwrite_keys"] is True
    assert any("." in key for key in line)
    assert options["expand_keys"] is True
    assert options["add_error_key"] is True


def test_nothing_is_renamed_on_the_way() -> None:
    """The fields already are ECS: no processor moves, renames or re-parses them."""
    text = "\n".join(yaml_lines())
    assert not [name for name in RENAMING if re.search(rf"^\s*-?\s*{name}:", text, re.MULTILINE)]
