"""Full-text search pages of the admin lists (conversations, threads, responses): the rows owning an item that
matches, newest first.

Only the items' GIN index knows which items hold a word, and it knows nothing of the lists' order; and it
answers only with a bitmap of every matching item, so even a read of the first few matches costs a little per
match of the whole index. A page is filled one of four ways:

- common words: walk the owners newest first on their keyset index and check each one's items on the owner's
  item index, never touching the GIN index; the cost falls as the word gets commoner. Taken first when the
  planner expects more than SEARCH_SCAN_CAP matching items (its estimate, from the column's statistics of
  frequent words, is good for common words and says "rare" for the others), for a budget of owners that
  shrinks as the estimate grows (walk_budget()): a word the estimate took for common that fills no page within
  the budget (before the list ends) falls back to the ways below, so a wrong estimate costs the budget, never a
  walk of the whole list;
- otherwise the matching items are read from the GIN index, at most SEARCH_SCAN_CAP + 1 of them, and counted:
  - rare words (at most SEARCH_PROBE_CAP matches): fetch the matches' owners by primary key and keep the
    newest; the cost grows with the matches;
  - words in between (at most SEARCH_SCAN_CAP matches): hold every match's owner in a hash, then walk the
    owners newest first on their keyset index, keeping those in the hash. Reading a match is one heap read,
    where a probe of its owner is an index descent and another heap read, and a step of this walk is the next
    entry of an index range (usually an index-only scan), where the common walk reads the owner's items: so
    this costs the least between the two caps, where the probes would cost more than this walk (whose length
    is a page divided by the share of owners that match) and reading every match less than the common walk;
  - more matches than that (the estimate said rare): the common walk, without a budget.

The statement holds all of them, as a UNION ALL whose branches are switched on by the count of the budgeted
walk's rows and of the bounded read, so that exactly one answers (PostgreSQL runs a branch's subplans, and
reads a CTE, only when a one-time filter lets it). The estimate decides only whether the budgeted walk runs
first; every page is exact whatever it says. No branch leaves the planner a choice that its estimates could get
wrong (a word's frequency is guessed from samples, and a guess an order of magnitude off once made a page
hundreds of times slower):

- the matched owners are fetched by primary key one by one (a LATERAL probe over the unnested ids), never by
  walking the list's index and comparing every row walked with the whole array of ids;
- the in-between walk tests `coalesce(id IN (SELECT owner FROM hits), false)`: a sublink PostgreSQL cannot
  turn into a join (it is not a plain condition of the WHERE), so it stays a subplan, hashed because it is
  uncorrelated and its rows are bounded (by the read's LIMIT);
- the common walk's test of one owner is a scalar subquery with LIMIT 1, which PostgreSQL runs per walked row
  and never turns into a join, and its match is written `coalesce(vector @@ query, false)`, which the GIN index
  cannot serve: so the only index for it is the owner's (item by thread, by conversation or by response), where
  an EXISTS let the planner read every matching item from the GIN index into a hash, for every page.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    CompoundSelect,
    Integer,
    Select,
    Text,
    and_,
    bindparam,
    false,
    func,
    literal,
    literal_column,
    or_,
    select,
    text,
    true,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.selectable import CTE

from service.admin.cursor import Keyset, newest_first, page_rows, probed_page
from service.db.models import item_table

item_t = item_table

# Inlined (not a bind parameter) so the query parses with a constant configuration, as the stored vector was.
SEARCH_CONFIG: ColumnElement[Any] = literal_column("'simple'::regconfig")
# Up to this many matching items, a page probes each match's owner by primary key; past it, a walk of the
# list's index holding the owners in a hash costs less (the walk gets shorter as the matches grow, the probes
# longer). Where the two cost about the same at 1M items.
SEARCH_PROBE_CAP = 500
# Matching items read from the GIN index before a search concludes the words are common and walks checking
# each owner's items instead: where reading every match costs about what that walk does at 1M items. Also the
# estimate of matches above which the walk goes first.
SEARCH_SCAN_CAP = 6000
# Owners the walk that goes first may check before it gives up on filling a page, at most: about the walk a word
# of SEARCH_SCAN_CAP matches needs at 1M items. Commoner words get less (walk_budget()), so that only a wrong
# estimate exhausts a budget, and a wrong estimate for a common word costs little.
SEARCH_WALK_BUDGET = 4000
# The budget is this many times the walk the estimates foretell.
_WALK_MARGIN = 2


def _query() -> ColumnElement[Any]:
    """The request's words, bound by name (admin/statements.py)."""
    return func.websearch_to_tsquery(SEARCH_CONFIG, bindparam("q", type_=Text))


@dataclass(frozen=True)
class Matches:
    """The bounded read of a search's matches (`hits`: their owners) and its count (`counted`, one row), each
    read once per statement whichever branches and kinds use them."""

    hits: CTE
    counted: CTE

    def found(self) -> ColumnElement[Any]:
        return select(self.counted.c.n).scalar_subquery()


def _matching(owner: Any) -> Select[Any]:
    """The owners of the matching items that have one. Items without an owner are left out as
    `coalesce(owner, '') <> ''` rather than `owner IS NOT NULL`, which a btree index on the owner answers: the
    planner could then read that whole index in its order instead of the matches."""
    return select(owner.label("owner")).where(item_t.c.search_vector.op("@@")(_query()), func.coalesce(owner, "") != "")


def matching_items(owner: Any) -> Matches:
    """The owners (`owner`, an item column) of the first SEARCH_SCAN_CAP + 1 matching items that have one, read
    once, when a branch needs them: all of them when the word is not common."""
    hits = _matching(owner).limit(SEARCH_SCAN_CAP + 1).cte("hits").prefix_with("MATERIALIZED")
    counted = select(func.count().label("n")).select_from(hits).cte("found").prefix_with("MATERIALIZED")
    return Matches(hits, counted)


# The planner's estimates, planned and not run, of the matching items and of the rows of the tables whose rows own
# items (from their sizes, not from samples): the statement's text is fixed, so it is prepared once per
# connection.
_ESTIMATE = text(
    "EXPLAIN (FORMAT JSON) SELECT 1 FROM item WHERE search_vector @@ websearch_to_tsquery('simple'::regconfig, :q)"
    " UNION ALL SELECT 1 FROM conversation UNION ALL SELECT 1 FROM response_chain UNION ALL SELECT 1 FROM response"
)


async def walk_budget(conn: AsyncConnection, q: str | None, page: int, *, owners: str) -> int:
    """How many owners the search may walk before it reads the matches (none: it reads them first; none either
    for a list that searches nothing, `q` None). `owners`: "threads" (conversations and chains) or "responses",
    the rows the list's owners are among.

    When the planner expects more than SEARCH_SCAN_CAP matching items, the walk goes first, with a budget of
    _WALK_MARGIN times the walk it foretells to fill a `page`, at most SEARCH_WALK_BUDGET: the owners divided
    by the matches, times the page, as if each match had its own owner (owners of several matches only make
    the walk shorter)."""
    if q is None:
        return 0
    plan = await conn.scalar(_ESTIMATE, {"q": q})
    if isinstance(plan, str):
        plan = json.loads(plan)
    matching, conversations, chains, responses = (float(branch["Plan Rows"]) for branch in plan[0]["Plan"]["Plans"])
    if matching <= SEARCH_SCAN_CAP:
        return 0
    foretold = page * (responses if owners == "responses" else conversations + chains) / matching
    return min(SEARCH_WALK_BUDGET, max(page, math.ceil(_WALK_MARGIN * foretold)))


def _holds_a_match(owner: Any, row_id: Any) -> ColumnElement[bool]:
    """Whether one of the row's items matches, read from the row's items alone (see the module's docstring)."""
    probe = (
        select(literal(1))
        .where(owner == row_id, func.coalesce(item_t.c.search_vector.op("@@")(_query()), false()))
        .limit(1)
        .scalar_subquery()
    )
    return probe.is_not(None)


def _in_hits(row_id: Any, hits: CTE) -> ColumnElement[bool]:
    """Whether the row owns one of the matches read (all of them, in the in-between branch): a hashed subplan
    over the bounded read (see the module's docstring), tested per walked row."""
    return func.coalesce(row_id.in_(select(hits.c.owner)), false())


def newest_matching(
    keys: Select[Any],
    *,
    at: Any,
    row_id: Any,
    owner: Any,
    matches: Matches,
    keyset: Keyset,
    name: str,
    id_prefix: str | None = None,
) -> CompoundSelect[Any]:
    """The page of `keys` (a select of the table's `row_id`, `at` and constants, with the list's filters) whose
    rows own a matching item, by the item column `owner`; `matches` is matching_items(owner); `name` names this
    table's CTEs. `id_prefix`: the table's ids start with it (service/ids.py), so owners without it are not
    probed there. The words (`q`) and the first walk's budget (`walk_first`, walk_budget()) are bound by name.
    Each branch yields at most a page; the caller orders the union and cuts it to the page."""
    page = page_rows()
    walk_first = bindparam("walk_first", type_=Integer)
    # The walk that goes first: the first `walk_first` rows of the list, those owning a match, up to a page.
    budget = newest_first(keys, at, row_id, keyset).limit(walk_first).subquery(f"{name}_budget")
    walked = (
        select(budget)
        .where(_holds_a_match(owner, budget.c[row_id.name]))
        .order_by(budget.c[at.name].desc(), budget.c[row_id.name].desc())
        .limit(page)
        .cte(f"{name}_walked")
        .prefix_with("MATERIALIZED")
    )
    walked_rows = select(func.count()).select_from(walked).scalar_subquery()
    # Its page is whole when it is full, or when the list ended within the budget (counted on the list's index
    # alone, only when the page is not full). Otherwise the budget may have cut it: the other branches start
    # again.
    listed = newest_first(keys, at, row_id, keyset).limit(walk_first).subquery(f"{name}_listed")
    listed_rows = select(func.count()).select_from(listed).scalar_subquery()
    first = (
        select(walked)
        .where(or_(walked_rows >= page, listed_rows < walk_first))
        .order_by(walked.c[at.name].desc(), walked.c[row_id.name].desc())
        .limit(page)
    )
    cut = and_(walked_rows < page, listed_rows >= walk_first)

    hits, found = matches.hits, matches.found()
    owners: Any = func.array_agg(hits.c.owner.distinct())
    if id_prefix is not None:
        owners = owners.filter(func.starts_with(hits.c.owner, id_prefix))
    # In each condition the walk's counts come first: PostgreSQL stops at the first false one, so the matches
    # are never read when the walk answered.
    rare = probed_page(select(owners).scalar_subquery(), keys, at, row_id, keyset).where(cut, found <= SEARCH_PROBE_CAP)
    between = keys.where(cut, found > SEARCH_PROBE_CAP, found <= SEARCH_SCAN_CAP, _in_hits(row_id, hits))
    common = keys.where(cut, found > SEARCH_SCAN_CAP, _holds_a_match(owner, row_id))
    return union_all(first, rare, newest_first(between, at, row_id, keyset), newest_first(common, at, row_id, keyset))


def search_page(
    keys: Select[Any], columns: Sequence[Any], *, at: Any, row_id: Any, owner: Any, keyset: Keyset
) -> Select[Any]:
    """A search page of one table: newest_matching on its keys, then each row's `columns` (expressions on the
    same table) read once per row of the page, by primary key."""
    matches = matching_items(owner)
    found = newest_matching(
        keys, at=at, row_id=row_id, owner=owner, matches=matches, keyset=keyset, name="list"
    ).subquery("found")
    page = (
        select(found).order_by(found.c[at.name].desc(), found.c[row_id.name].desc()).limit(page_rows()).subquery("page")
    )
    row = select(*columns).where(row_id == page.c[row_id.name]).limit(1).lateral("row")
    return select(row).select_from(page.join(row, true())).order_by(page.c[at.name].desc(), page.c[row_id.name].desc())
