"""A hand-written SQL statement whose parameters are named (`$response_id`) and bound by name.

asyncpg takes positional parameters ($1..$n). Numbering them by hand makes every call site a list of values
that must match the statement's order; here the statement is numbered once, at import, and each call passes
a mapping from name to value, checked against the names the statement uses.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_PARAMETER = re.compile(r"\$([a-z_]+)")


class Statement:
    def __init__(self, sql: str) -> None:
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in names:
                names.append(name)
            return f"${names.index(name) + 1}"

        self.sql = _PARAMETER.sub(number, sql)
        self.names = tuple(names)

    def args(self, values: Mapping[str, Any]) -> list[Any]:
        """The values in the statement's parameter order; every name exactly once, no value left over."""
        if len(values) != len(self.names):
            unknown = sorted(set(values) - set(self.names))
            missing = sorted(set(self.names) - set(values))
            raise ValueError(f"statement parameters: missing {missing}, unknown {unknown}")
        return [values[name] for name in self.names]
