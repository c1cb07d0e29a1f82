"""Values the offline demo upstream fills a JSON Schema with: the `text.format` a client asks its answer in
(`responses.parse` with a pydantic model) and a function's `parameters`, so that structured output and function
arguments can be tried with `make run` and no key. One value per schema, the plainest that fits: the first of an
`enum`, a `const`, every property of an object, the fewest array items allowed, a string of a known `format` in
that format. Neither a model nor a validator: a `pattern` is not matched, a schema it cannot fill (a recursive
`$ref` past a few levels) gets null, and one asking for more than 10,000 values or 100,000 characters gets less."""

from __future__ import annotations

from typing import Any

_MAX_DEPTH = 8
_MAX_VALUES = 10_000
_MAX_CHARACTERS = 100_000  # of all its strings together
# Strings in the formats JSON Schema names, as pydantic's datetime, date, EmailStr, AnyUrl and UUID check them.
_FORMATTED = {
    "date-time": "2026-01-01T00:00:00Z",
    "date": "2026-01-01",
    "time": "00:00:00Z",
    "duration": "P1D",
    "email": "demo@example.com",
    "hostname": "example.com",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "uri": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


def example(schema: Any) -> Any:
    """A value `schema` accepts (see the module's docstring for what "accepts" covers)."""
    definitions = {**_dict(schema.get("definitions")), **_dict(schema.get("$defs"))} if isinstance(schema, dict) else {}
    return _Filler(definitions).value(schema, depth=0)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _bound(schema: dict[str, Any], name: str) -> int | float | None:
    value = schema.get(name)
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _number(schema: dict[str, Any], whole: bool) -> int | float:
    """0, or the bound nearest to it when 0 is out of range."""
    low, high = _bound(schema, "minimum"), _bound(schema, "maximum")
    above, below = _bound(schema, "exclusiveMinimum"), _bound(schema, "exclusiveMaximum")
    value: int | float = 0
    if low is not None and low > 0:
        value = low
    elif above is not None and above >= 0:
        value = above + 1
    elif high is not None and high < 0:
        value = high
    elif below is not None and below <= 0:
        value = below - 1
    return int(value) if whole else value


class _Filler:
    """One schema's value, within a budget of values and a string length: a client's schema is any JSON, and arrays
    of arrays each with a large `minItems` (or a `minLength` of 10**9) would otherwise make an answer without end."""

    def __init__(self, definitions: dict[str, Any]) -> None:
        self._definitions = definitions
        self._left = _MAX_VALUES
        self._characters_left = _MAX_CHARACTERS

    def value(self, schema: Any, *, depth: int) -> Any:
        self._left -= 1  # a null given in place of a value costs one too: an array may hold many
        if not isinstance(schema, dict) or depth > _MAX_DEPTH or self._left < 0:
            return None
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return schema["enum"][0]
        ref = schema.get("$ref")
        if isinstance(ref, str):
            return self.value(self._definitions.get(ref.rsplit("/", 1)[-1]), depth=depth + 1)
        for combined in ("anyOf", "oneOf", "allOf"):
            options = schema.get(combined)
            if isinstance(options, list) and options:
                # anyOf [X, null] is how an Optional field is written: X shows more of the demo than null does.
                chosen = next((o for o in options if isinstance(o, dict) and o.get("type") != "null"), options[0])
                return self.value(chosen, depth=depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), None)
        return self._of_type(kind, schema, depth)

    def _of_type(self, kind: Any, schema: dict[str, Any], depth: int) -> Any:
        if kind == "object" or (kind is None and "properties" in schema):
            properties = _dict(schema.get("properties"))
            return {name: self.value(sub, depth=depth + 1) for name, sub in properties.items()}
        if kind == "array":
            least = _bound(schema, "minItems")
            count = int(least) if least is not None and 1 <= least <= _MAX_VALUES else 1
            items = []
            for _ in range(count):
                if self._left <= 0:
                    break
                items.append(self.value(schema.get("items"), depth=depth + 1))
            return items
        if kind == "string":
            text = _FORMATTED.get(str(schema.get("format")), "demo")
            least, most = _bound(schema, "minLength"), _bound(schema, "maxLength")
            if least is not None and least > len(text):
                text = text + "o" * (int(min(least, len(text) + self._characters_left)) - len(text))
            if most is not None:
                text = text[: max(0, int(min(most, len(text))))]
            self._characters_left = max(0, self._characters_left - len(text))
            return text
        if kind in ("integer", "number"):
            return _number(schema, whole=kind == "integer")
        if kind == "boolean":
            return False
        return None
