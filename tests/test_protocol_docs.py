"""The README's websocket protocol table against the JSON Schema the service serves
(`protocol_schema`, generated from the message models): every event documented, every field
the table shows one the schema has, no event the schema lacks."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from streamguard.service.protocol import PROTOCOL_VERSION, protocol_schema

README = Path(__file__).resolve().parents[1] / "README.md"
DIRECTIONS = {"client → server": "client_events", "server → client": "server_events"}


def readme_section() -> str:
    text = README.read_text()
    start = text.index("### Websocket protocol")
    return text[start : text.index("\n## ", start)]


def documented_events() -> list[tuple[str, dict[str, Any]]]:
    """(schema key of the direction, example message) for each message in the table."""
    events = []
    for row in readme_section().splitlines():
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        if len(cells) < 2 or cells[0] not in DIRECTIONS:
            continue
        for example in re.findall(r"`(\{[^`]*\})`", cells[1]):
            events.append((DIRECTIONS[cells[0]], json.loads(example.replace("{...}", "{}"))))
    return events


def definition(schema: dict[str, Any], ref: str) -> dict[str, Any]:
    return schema["$defs"][ref.rsplit("/", 1)[-1]]


def referenced(schema: dict[str, Any], field: dict[str, Any]) -> dict[str, Any] | None:
    """The model a field holds (directly or as the non-null member of a union), if any."""
    for option in [field, *field.get("anyOf", [])]:
        if "$ref" in option:
            return definition(schema, option["$ref"])
    return None


def check_fields(schema: dict[str, Any], model: dict[str, Any], example: dict[str, Any], where: str) -> None:
    unknown = set(example) - set(model["properties"])
    assert not unknown, f"{where}: the README shows fields the protocol lacks: {sorted(unknown)}"
    for name, value in example.items():
        nested = referenced(schema, model["properties"][name])
        if isinstance(value, dict) and value and nested is not None:
            check_fields(schema, nested, value, f"{where}.{name}")


SCHEMA = protocol_schema()
EVENTS = documented_events()


@pytest.mark.parametrize(("direction", "example"), EVENTS, ids=[example["type"] for _, example in EVENTS])
def test_each_documented_message_is_one_of_the_protocol(direction, example):
    schema = SCHEMA[direction]
    mapping = schema["discriminator"]["mapping"]
    assert example["type"] in mapping, f"{example['type']} is not a {direction} type: {sorted(mapping)}"
    model = definition(schema, mapping[example["type"]])
    check_fields(schema, model, example, example["type"])
    missing = set(model.get("required", [])) - set(example)
    assert not missing, f"{example['type']}: the README leaves out required fields {sorted(missing)}"


def test_every_message_of_the_protocol_is_documented_in_its_direction():
    for direction in DIRECTIONS.values():
        documented = {example["type"] for side, example in EVENTS if side == direction}
        assert documented == set(SCHEMA[direction]["discriminator"]["mapping"]), direction


def test_the_readme_names_the_protocol_version_it_documents():
    assert f"Protocol version {PROTOCOL_VERSION};" in readme_section()
