"""Checking real answers against the schemas the service's OpenAPI document names for them."""

from __future__ import annotations

from typing import Any

import httpx
import jsonschema
from referencing import Registry, Resource


def ref_name(schema: dict[str, Any]) -> str:
    ref = schema.get("$ref", "")
    assert ref.startswith("#/components/schemas/"), schema
    return str(ref.rsplit("/", 1)[1])


class DocumentChecker:
    """Validates real answers against the component the document names for them."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        resource = Resource.from_contents({"$schema": "https://json-schema.org/draft/2020-12/schema", **document})
        self.registry: Registry[Any] = Registry().with_resource("urn:doc", resource)

    def check(self, method: str, path: str, answer: httpx.Response) -> None:
        operation = self.document["paths"][path][method.lower()]
        documented = operation["responses"][str(answer.status_code)]
        name = ref_name(documented["content"]["application/json"]["schema"])
        schema = {"$ref": f"urn:doc#/components/schemas/{name}"}
        jsonschema.Draft202012Validator(schema, registry=self.registry).validate(answer.json())
