"""Full-text search pages of the admin lists (conversations, threads, responses): the rows owning an item that
matches, newest first.

Only the items' GIN index knows which items hold a word, and it knows nothing of the lists' order. A page is
filled one of two ways:

- rare words: read the matching items from the GIN index (at most SEARCH_SCAN_CAP + 1 of them), then fetch
  their owners by primary key and keep the newest; the cost grows with the matches, up to the cap;
- common words (more matches than the cap): walk the owners newest first on their keyset index and check each
  one's items on the owner's item index; the cost falls as the word gets commoner.

The statement holds both, as a UNION ALL whose branches are switched on by the count of the bounded read, so
exactly one runs. Neither branch leaves the planner a choice that its estimates could get wrong (a word's
frequency is guessed from samples; a guess off by 10x once turned a 5 ms page into 0.3 s):

- the matched owners are fetched with `id = ANY(array)`: a primary-key probe each, never a hash of the table;
- the walk's test of one owner is a scalar subquery with LIMIT 1, which PostgreSQL runs per walked row and never
  turns into a join, and its match is written `coalesce(vector @@ query, false)`, which the GIN index cannot
  serve: so the only index for it is the owner's (item by thread, by conversation or by response), where an
  EXISTS let the planner read every matching item from the GIN index into a hash, for every page.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    CompoundSelect,
    Select,
    Text,
    cast,
    false,
    func,
    literal,
    literal_column,
    select,
    true,
    union_all,
)
from sqlalchemy.sql.selectable import CTE

from service.admin.cursor import Keyset, after_keyset, newest_first
from service.db.models import item_table

item_t = item_table

# Inlined (not a bind parameter) so the query parses with a constant configuration, as the stored vector was.
SEARCH_CONFIG: ColumnElement[Any] = literal_column("'simple'::regconfig")
# Matching items read from the GIN index before a search concludes the words are common and walks instead:
# where the two ways cost about the same at 1M items (docs/benchmarks.md).
SEARCH_SCAN_CAP = 2000


def _query(q: str) -> ColumnElement[Any]:
    return func.websearch_to_tsquery(SEARCH_CONFIG, q)


def matching_items(owner: Any, q: str) -> CTE:
    """The owners (`owner`, an item column) of the first SEARCH_SCAN_CAP + 1 matching items that have one, read
    once. Items without an owner are left out as `coalesce(owner, '') <> ''` rather than `owner IS NOT NULL`,
    which a btree index on the owner answers: the planner could then read that whole index in its order
    instead of the matches."""
    return (
        select(owner.label("owner"))
        .where(item_t.c.search_vector.op("@@")(_query(q)), func.coalesce(owner, "") != "")
        .limit(SEARCH_SCAN_CAP + 1)
        .cte("hits")
        .prefix_with("MATERIALIZED")
    )


def _holds_a_match(owner: Any, row_id: Any, q: str) -> ColumnElement[bool]:
    """Whether one of the row's items matches, read from the row's items alone (see the module's docstring)."""
    probe = (
        select(literal(1))
        .where(owner == row_id, func.coalesce(item_t.c.search_vector.op("@@")(_query(q)), false()))
        .limit(1)
        .scalar_subquery()
    )
    return probe.is_not(None)


def newest_matching(
    keys: Select[Any],
    *,
    at: Any,
    row_id: Any,
    owner: Any,
    hits: CTE,
    q: str,
    keyset: Keyset,
    id_prefix: str | None = None,
) -> CompoundSelect[Any]:
    """The page of `keys` (a select of the table's `row_id`, `at` and constants, with the list's filters) whose
    rows own a matching item, by the item column `owner`; `hits` is matching_items(owner, q). `id_prefix`: the
    table's ids start with it (service/ids.py), so owners without it are not probed there. Either branch yields
    at most a page; the caller orders the union and cuts it to the page."""
    found = select(func.count()).select_from(hits).scalar_subquery()
    owners: Any = func.array_agg(hits.c.owner.distinct())
    if id_prefix is not None:
        owners = owners.filter(func.starts_with(hits.c.owner, id_prefix))
    hit_ids = cast(select(owners).scalar_subquery(), ARRAY(Text))
    # Each matched owner by primary key (LIMIT 1 keeps it a probe per owner), the list's filters applied to
    # it: a walk of the list's index checking `id = ANY(array)` would compare every row walked with every id.
    hit = select(func.unnest(hit_ids).label("id")).subquery("hit")
    probe = after_keyset(keys, at, row_id, keyset).where(row_id == hit.c.id).limit(1).lateral("matched")
    rare = (
        select(probe)
        .select_from(hit.join(probe, true()))
        .where(found <= SEARCH_SCAN_CAP)
        .order_by(probe.c[at.name].desc(), probe.c[row_id.name].desc())
        .limit(keyset.limit + 1)
    )
    common = keys.where(found > SEARCH_SCAN_CAP, _holds_a_match(owner, row_id, q))
    return union_all(rare, newest_first(common, at, row_id, keyset))


def search_page(
    keys: Select[Any], columns: Sequence[Any], *, at: Any, row_id: Any, owner: Any, q: str, keyset: Keyset
) -> Select[Any]:
    """A search page of one table: newest_matching on its keys, then each row's `columns` (expressions on the
    same table) read once per row of the page, by primary key."""
    hits = matching_items(owner, q)
    found = newest_matching(keys, at=at, row_id=row_id, owner=owner, hits=hits, q=q, keyset=keyset).subquery("found")
    page = (
        select(found)
        .order_by(found.c[at.name].desc(), found.c[row_id.name].desc())
        .limit(keyset.limit + 1)
        .subquery("page")
    )
    row = select(*columns).where(row_id == page.c[row_id.name]).limit(1).lateral("row")
    return select(row).select_from(page.join(row, true())).order_by(page.c[at.name].desc(), page.c[row_id.name].desc())
