"""Checks objects against OpenAI's specification (schemas.json, extracted by extract.py) with a JSON Schema
validator: `check("Response", body)`, `check_event(event)` picks the event's schema by its `type`."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource

_SPEC = json.loads((Path(__file__).parent / "schemas.json").read_text())
SCHEMAS: dict[str, Any] = _SPEC["components"]["schemas"]
_URI = "urn:openai-spec"
_REGISTRY: Registry[Any] = Registry().with_resource(
    _URI, Resource.from_contents({"$schema": "https://json-schema.org/draft/2020-12/schema", **_SPEC})
)


@cache
def _validator(name: str) -> jsonschema.Draft202012Validator:
    assert name in SCHEMAS, name
    return jsonschema.Draft202012Validator({"$ref": f"{_URI}#/components/schemas/{name}"}, registry=_REGISTRY)


def problems(name: str, instance: Any) -> list[str]:
    return [
        f"{name} at {'/'.join(str(p) for p in error.absolute_path) or '.'}: {error.message[:300]}"
        for error in _validator(name).iter_errors(instance)
    ]


def _as_documented(instance: Any) -> Any:
    """OpenAI's own examples show `usage: null` while a response is queued or in progress (the schema has no
    null): such a response is checked without it."""
    if isinstance(instance, dict):
        if instance.get("object") == "response" and instance.get("usage") is None:
            assert instance.get("status") in {"queued", "in_progress"}, "usage is null only while in progress"
            instance = {k: v for k, v in instance.items() if k != "usage"}
        if isinstance(instance.get("response"), dict):
            instance = {**instance, "response": _as_documented(instance["response"])}
    return instance


def check(name: str, instance: Any) -> None:
    found = problems(name, _as_documented(instance))
    assert not found, "\n".join(found)


def _event_schemas() -> dict[str, str]:
    by_type = {}
    for option in SCHEMAS["ResponseStreamEvent"]["anyOf"]:
        name = option["$ref"].rsplit("/", 1)[1]
        for kind in SCHEMAS[name]["properties"]["type"].get("enum", []):
            by_type[kind] = name
    return by_type


EVENT_SCHEMAS = _event_schemas()


def check_event(event: dict[str, Any]) -> str:
    """Checks one stream event against the schema of its type; answers that type."""
    kind = event["type"]
    assert kind in EVENT_SCHEMAS, f"{kind} is not an event type of OpenAI's specification"
    check(EVENT_SCHEMAS[kind], event)
    return str(kind)
