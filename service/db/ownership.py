"""A row the client names by its key, checked to be the caller's tenant's.

The check is `tenant_id IS NOT DISTINCT FROM :tenant`, which no index can answer, so the row is always found by
its key. Written as `=`, it let the planner read the row through an index that leads with tenant_id instead: on
a table without statistics (a new database, until autovacuum first analyzes it) that index looks as cheap as the
primary key, and a connection keeps the plan it made then (the service's connections use generic plans), reading
every row of the tenant for each lookup. service/responses/turn_store.py writes the same check in its SQL.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement


def owned_by(tenant_column: ColumnElement[str], tenant_id: str) -> ColumnElement[bool]:
    return tenant_column.is_not_distinct_from(tenant_id)
