"""Writes schemas.json here: the part of OpenAI's OpenAPI specification the service's objects are checked against
(the named roots and every schema they reference), so tests need neither the 10 MB file nor the network.

    python tests/openai_spec/extract.py ../shared/reference/openai-openapi.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOTS = (
    "Response",
    "ResponseStreamEvent",
    "ResponseItemList",
    "ConversationResource",
    "DeletedConversationResource",
    "ConversationItemList",
    "ConversationItem",
    "ErrorResponse",
    "Model",
    "ListModelsResponse",
    "TokenCountsResource",
    "CompactResource",
)
PREFIX = "#/components/schemas/"


def closure(schemas: dict[str, Any]) -> dict[str, Any]:
    kept: dict[str, Any] = {}

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            ref = value.get("$ref")
            if isinstance(ref, str) and ref.startswith(PREFIX) and ref[len(PREFIX) :] not in kept:
                name = ref[len(PREFIX) :]
                kept[name] = schemas[name]
                walk(schemas[name])
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk([{"$ref": PREFIX + root} for root in ROOTS])
    return dict(sorted(kept.items()))


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    kept = closure(spec["components"]["schemas"])
    out = {"openapi": spec["openapi"], "info": spec["info"], "components": {"schemas": kept}}
    (Path(__file__).parent / "schemas.json").write_text(json.dumps(out, indent=0, sort_keys=True) + "\n")
    print(f"{len(kept)} schemas")


if __name__ == "__main__":
    main()
