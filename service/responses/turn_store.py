"""The turn's hot statements, written out, sent on the driver (asyncpg) connection.

A turn's begin and its finish are each one statement: data-modifying CTEs make every part of a step commit or
fail together without BEGIN/COMMIT round trips, and asyncpg keeps each statement prepared. The history comes
back as one text (the stored item JSON texts joined by commas), ready to splice into the upstream body.
Everything else (listings, admin, items) uses SQLAlchemy; these statements run for every turn, so they are
written by hand (docs/benchmarks.md has the measured difference). Parameters are named and bound by name
(service/responses/statement.py).

A row the client names (a conversation, a previous response) is found by its primary key and then checked to
be the tenant's with `tenant_id IS NOT DISTINCT FROM $tenant_id`, which no index can answer (as
service/db/ownership.py does for the API's other reads by key). Written as `=`, the check let the planner read
the row through the (tenant_id, ...) index instead: on a table without statistics (a new database, until
autovacuum first analyzes it) both indexes look equally cheap, and a connection keeps the plan it made then,
reading every row of the tenant on every turn (tests/test_turn_plans.py).

Which statements a turn uses depends on two facts about it:
- in a conversation, continuing a previous response (a chain), or neither (a conversation turn claims the
  conversation and appends to it; a chained turn checks the response it continues);
- whether a client can see the response before it finishes (streamed or background: the client learns its id
  from the first event). A turn no client sees before its end ("unseen") stores nothing but the claim in its
  begin (a chained one, nothing at all); its finish stores its response row, input items and outcome together.
  Nothing can look for that response in between: its id is in no answer yet. Storing an in-progress row would
  cost every turn a row version and an entry in each of the response table's indexes, written at the begin and
  again at the finish, and moving its input items into the conversation would be a second version of each. Its
  begin also does not wait for the write-ahead log to reach the disk: the finish's commit flushes the log up to
  itself, begin included, before the client hears of the response (set_config(..., true) lasts until the
  statement's transaction ends). If PostgreSQL crashes or the process dies in between, the turn fails as every
  turn in flight then does, and nothing the client was told about is missing: the claim expires and the reaper
  releases it. The admin listing shows such a claimed thread as in_progress (service/admin/repository.py).
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec
from asyncpg.exceptions import ForeignKeyViolationError

from service.items import NewItem, item_arrays
from service.responses.history_cache import CachedHistory, joined, stored_counts
from service.responses.statement import Statement
from service.responses.status import ANSWERED, RUNNING, answered_sql
from service.threads import totals as chain_totals

PREVIOUS_RESPONSE_FK = "fk_response_previous_response_id_response"

# -- begin -------------------------------------------------------------------------------------------------

# Claim the conversation (one writer at a time), store the response as in_progress with its input items, and
# read the history, in one statement; for a turn visible before its finish. The claim locks the conversation
# row; an expired claim is taken over and its holder reported; a conversation being purged or deleted is not
# claimed (service/db/visibility.py). The history is read from the statement's snapshot, which a turn that
# finished while we waited for the lock is not in: `history_is_current` compares the row the snapshot saw with
# the row we claimed (every change to a conversation's items moves next_position or item_count), and the caller
# reads the history again when they differ. Only the items from $history_from on are read: the caller holds the ones
# before (service/responses/history_cache.py), 0 when it holds none. The claim writes no indexed column, so
# PostgreSQL can make it a HOT update: last_model and last_status are the last finished turn's, written by the
# finish. Aggregating an ordered subquery keeps its order (an ORDER BY inside string_agg would sort again, on
# disk for long histories).
_CLAIM_AND_STORE = Statement(
    """
    WITH claim AS (
        UPDATE conversation AS c
        SET turn_response_id = $response_id,
            turn_expires_at = now() + make_interval(secs => $ttl), turn_claimed_at = now()
        FROM (SELECT id, turn_response_id FROM conversation
              WHERE id = $conversation_id AND tenant_id IS NOT DISTINCT FROM $tenant_id
                AND purging_since IS NULL AND deleted_at IS NULL
              FOR UPDATE) AS before
        WHERE c.id = before.id AND (c.turn_response_id IS NULL OR c.turn_expires_at <= now())
        RETURNING c.next_position, c.item_count, before.turn_response_id AS previous_holder
    ),
    stored AS (
        INSERT INTO response (id, tenant_id, conversation_id, conversation_position, previous_response_id, status,
                              model, instructions, params_json, metadata, background, stream, thread_id,
                              request_id, idempotency_key)
        SELECT $response_id, $tenant_id, $conversation_id, claim.next_position, $previous_response_id, $status,
               $model, $instructions, $params_json, $metadata::jsonb, $background, $stream, $conversation_id,
               $request_id, $idempotency_key
        FROM claim
        RETURNING created_at
    ),
    inputs AS (
        INSERT INTO item (id, tenant_id, response_id, is_output, ordinal, thread_id, type, role, status, body,
                          text_content, token_count)
        SELECT u.id, $tenant_id, $response_id, false, u.ordinal - 1, $conversation_id, u.type, u.role, u.status,
               u.body, u.text_content, u.token_count
        FROM claim, unnest($ids::text[], $types::text[], $roles::text[], $statuses::text[], $bodies::text[],
                           $texts::text[], $token_counts::int[])
                           WITH ORDINALITY AS u(id, type, role, status, body, text_content, token_count, ordinal)
    )
    SELECT claim.next_position, claim.item_count, claim.previous_holder, stored.created_at,
           snapshot.is_current AS history_is_current, tail.history, tail.item_count AS tail_count, tail.counts
    FROM claim, stored, LATERAL (
        SELECT (claim.next_position, claim.item_count) =
               (SELECT next_position, item_count FROM conversation WHERE id = $conversation_id) AS is_current
    ) AS snapshot, LATERAL (
        SELECT string_agg(body, ',') AS history, count(*) AS item_count, array_agg(token_count) AS counts FROM (
            SELECT body, token_count FROM item
            WHERE snapshot.is_current AND conversation_id = $conversation_id AND position >= $history_from
            ORDER BY position
        ) h
    ) AS tail
    """
)

# The same claim and history read for an unseen turn: nothing stored but the claim, and the statement's time
# stands for the response's creation, which the finish stores.
_CLAIM_ONLY = Statement(
    """
    WITH claim AS (
        UPDATE conversation AS c
        SET turn_response_id = $response_id,
            turn_expires_at = now() + make_interval(secs => $ttl), turn_claimed_at = now()
        FROM (SELECT id, turn_response_id FROM conversation
              WHERE id = $conversation_id AND tenant_id IS NOT DISTINCT FROM $tenant_id
                AND purging_since IS NULL AND deleted_at IS NULL
              FOR UPDATE) AS before
        WHERE c.id = before.id AND (c.turn_response_id IS NULL OR c.turn_expires_at <= now())
        RETURNING c.next_position, c.item_count, before.turn_response_id AS previous_holder
    ),
    stored AS (SELECT now() AS created_at, set_config('synchronous_commit', 'off', true))
    SELECT claim.next_position, claim.item_count, claim.previous_holder, stored.created_at,
           snapshot.is_current AS history_is_current, tail.history, tail.item_count AS tail_count, tail.counts
    FROM claim, stored, LATERAL (
        SELECT (claim.next_position, claim.item_count) =
               (SELECT next_position, item_count FROM conversation WHERE id = $conversation_id) AS is_current
    ) AS snapshot, LATERAL (
        SELECT string_agg(body, ',') AS history, count(*) AS item_count, array_agg(token_count) AS counts FROM (
            SELECT body, token_count FROM item
            WHERE snapshot.is_current AND conversation_id = $conversation_id AND position >= $history_from
            ORDER BY position
        ) h
    ) AS tail
    """
)

# A turn outside a conversation: the response and its input items, in one statement. Its input items stay where
# they are stored (no conversation takes them), and nothing of it is left to its finish: a begin that fails here
# (the response it continues deleted, the database down) fails before the upstream call. An unseen one does not
# wait for the disk ($lazy_commit), as _CLAIM_ONLY. Its thread is its parent's (a chain's, or the conversation's
# that a chain continues); with no parent it starts a chain (service/threads/totals.py).
_BEGIN = Statement(
    f"""
    WITH stored AS (
        INSERT INTO response (id, tenant_id, conversation_id, previous_response_id, status, model, instructions,
                              params_json, metadata, background, stream, thread_id, request_id, idempotency_key)
        VALUES ($response_id, $tenant_id, $conversation_id, $previous_response_id, $status, $model, $instructions,
                $params_json, $metadata::jsonb, $background, $stream, {chain_totals.THREAD_OF_NEW_RESPONSE},
                $request_id, $idempotency_key)
        RETURNING created_at, thread_id,
                  CASE WHEN $lazy_commit THEN set_config('synchronous_commit', 'off', true) END
    ),
    inputs AS (
        INSERT INTO item (id, tenant_id, response_id, is_output, ordinal, thread_id, type, role, status, body,
                          text_content, token_count)
        SELECT u.id, $tenant_id, $response_id, false, u.ordinal - 1, stored.thread_id, u.type, u.role, u.status,
               u.body, u.text_content, u.token_count
        FROM stored, unnest($ids::text[], $types::text[], $roles::text[], $statuses::text[], $bodies::text[],
                            $texts::text[], $token_counts::int[])
                            WITH ORDINALITY AS u(id, type, role, status, body, text_content, token_count, ordinal)
    ),
    chain AS ({chain_totals.START_CHAIN})
    SELECT created_at, (SELECT history_generation FROM tenant WHERE id = $tenant_id) AS generation FROM stored
    """
)

# The whole history again, for a begin whose snapshot missed a turn or whose cached copy a deletion made stale.
# Written as the begin's tail read (a range of positions from a bound parameter, here 0) so that its generic plan
# is the same ordered range of (conversation_id, position): with no bound on position, the planner chose between
# that and a bitmap read plus a sort from the average conversation's size.
_HISTORY = Statement(
    """
    SELECT string_agg(body, ',') AS history, array_agg(token_count) AS counts
    FROM (SELECT body, token_count FROM item
          WHERE conversation_id = $conversation_id AND position >= $history_from
          ORDER BY position) h
    """
)

# -- a chain's history (`previous_response_id`) ----------------------------------------------------------
# Every plan below is fixed by its shape, not by statistics, so it is the same at any table size (and the
# connections plan generic plans, once per statement): each step starts from one row found by primary key
# (response.id, tenant.id), each join to an ancestor is a primary-key lookup from one row, and each item read is
# a correlated subquery (an aggregate, which PostgreSQL cannot flatten into a join) whose only sensible path is
# the (response_id, is_output, ordinal) or (conversation_id, position) index. No step is a join whose method the
# planner picks from row estimates: that is what made the earlier recursive join flip to a sequential scan.

# The previous response, checked (the tenant's, not deleted, its status), with the tenant's history generation
# in the same snapshot, and the statement's time (an unseen turn's created_at). Used when the worker holds
# the previous response's history. The row is locked as a foreign key check locks it (for the statement only):
# a delete of it that has not committed yet is waited for, so a turn that begins while its previous response
# is being deleted fails as it would have had the delete come first, before any upstream call. Taking the lock
# writes to the write-ahead log, which would make the statement's commit wait for the disk; a lock is nothing
# after a crash, so it does not wait (set_config(..., true) lasts until the statement's transaction ends).
# An answered response that ran in a conversation since deleted (its row gone: an idle conversation's purge; a
# tenant's own delete keeps the row while such a response is stored) has lost the history before it, so nothing
# can continue it: its status reads HISTORY_GONE, which neither notes a running child nor lists a turn on the
# chain (both need an answered status). An ancestor's reads '' as its conversation.
HISTORY_GONE = "history_gone"


def _conversation_gone(alias: str) -> str:
    """The response (`alias`, or the columns themselves) ran in a conversation whose row is gone."""
    prefix = f"{alias}." if alias else ""
    return f"{prefix}conversation_id IS NULL AND {prefix}conversation_position IS NOT NULL"


_STATUS_OR_GONE = f"""CASE WHEN {_conversation_gone("p")} AND {answered_sql("p.status")}
                          THEN '{HISTORY_GONE}' ELSE p.status END AS status"""


def _conversation_or_gone(alias: str) -> str:
    return f"CASE WHEN {_conversation_gone(alias)} THEN '' ELSE {alias}.conversation_id END"


_PREVIOUS_SQL = f"""
    SELECT {_STATUS_OR_GONE}, p.thread_id, t.history_generation AS generation, now() AS now,
           set_config('synchronous_commit', 'off', true) AS lock_only
    FROM response p JOIN tenant t ON t.id = p.tenant_id
    WHERE p.id = $previous_response_id AND p.tenant_id IS NOT DISTINCT FROM $tenant_id AND p.deleted_at IS NULL
    FOR KEY SHARE OF p
"""

# The same, and the previous response and its three nearest ancestors with their own items (inputs then
# outputs), for a worker that does not hold the previous response's history: it continues from the nearest
# ancestor it holds (chain_cache.py). Hidden (deleted_at) ancestors stay part of the history.
_PREVIOUS_AND_ANCESTORS_SQL = f"""
    SELECT {_STATUS_OR_GONE}, p.thread_id, t.history_generation AS generation, now() AS now,
           set_config('synchronous_commit', 'off', true) AS lock_only,
           p.id AS id0, p.previous_response_id AS previous0, {_conversation_or_gone("p")} AS conversation0,
           h0.items AS items0, h0.counts AS counts0,
           a1.id AS id1, a1.previous_response_id AS previous1, {_conversation_or_gone("a1")} AS conversation1,
           h1.items AS items1, h1.counts AS counts1,
           a2.id AS id2, a2.previous_response_id AS previous2, {_conversation_or_gone("a2")} AS conversation2,
           h2.items AS items2, h2.counts AS counts2,
           a3.id AS id3, a3.previous_response_id AS previous3, {_conversation_or_gone("a3")} AS conversation3,
           h3.items AS items3, h3.counts AS counts3
    FROM response p
    JOIN tenant t ON t.id = p.tenant_id
    LEFT JOIN response a1 ON a1.id = p.previous_response_id
    LEFT JOIN response a2 ON a2.id = a1.previous_response_id
    LEFT JOIN response a3 ON a3.id = a2.previous_response_id
    CROSS JOIN LATERAL (SELECT string_agg(body, ',') AS items, array_agg(token_count) AS counts FROM (
        SELECT body, token_count FROM item WHERE response_id = p.id ORDER BY is_output, ordinal) i) h0
    CROSS JOIN LATERAL (SELECT string_agg(body, ',') AS items, array_agg(token_count) AS counts FROM (
        SELECT body, token_count FROM item WHERE response_id = a1.id ORDER BY is_output, ordinal) i) h1
    CROSS JOIN LATERAL (SELECT string_agg(body, ',') AS items, array_agg(token_count) AS counts FROM (
        SELECT body, token_count FROM item WHERE response_id = a2.id ORDER BY is_output, ordinal) i) h2
    CROSS JOIN LATERAL (SELECT string_agg(body, ',') AS items, array_agg(token_count) AS counts FROM (
        SELECT body, token_count FROM item WHERE response_id = a3.id ORDER BY is_output, ordinal) i) h3
    WHERE p.id = $previous_response_id AND p.tenant_id IS NOT DISTINCT FROM $tenant_id AND p.deleted_at IS NULL
    FOR KEY SHARE OF p
"""
_ANCESTOR_LEVELS = 4


# A plain turn continuing the previous response, noted while it runs (service/db/models.py, RunningChainTurn) in
# the statement that read and locked that response: a delete of it, which locks it first, either saw this row
# or comes after it and finds the row gone or hidden. Noted twice (a begin that reads again), it keeps one row.
_NOTE_RUNNING_CHILD = """
    INSERT INTO running_chain_turn (response_id, previous_response_id, expires_at)
    SELECT $response_id, $previous_response_id, now() + make_interval(secs => $ttl)
    FROM previous WHERE previous.status = ANY($answered::text[])
    ON CONFLICT (response_id) DO UPDATE SET expires_at = excluded.expires_at
"""


def _marking_the_turn(previous: str) -> Statement:
    """The same read, for a stored turn that no client sees before its end: it also notes the turn as a running
    child of the previous response, for deletes, and lists it on its chain's row (service/threads/totals.py),
    so that the admin listing shows the chain in_progress while it runs at the cost of a HOT update rather than
    a statement or index entries."""
    return Statement(
        f"""
    WITH previous AS MATERIALIZED ({previous}),
    noted AS ({_NOTE_RUNNING_CHILD}),
    marked AS ({chain_totals.MARK_RUNNING_TURN})
    SELECT * FROM previous
    """
    )


_PREVIOUS = Statement(_PREVIOUS_SQL)
_PREVIOUS_AND_ANCESTORS = Statement(_PREVIOUS_AND_ANCESTORS_SQL)
_PREVIOUS_MARKING = _marking_the_turn(_PREVIOUS_SQL)
_PREVIOUS_AND_ANCESTORS_MARKING = _marking_the_turn(_PREVIOUS_AND_ANCESTORS_SQL)

# A chain's whole history, when no ancestor within reach is cached (a cold worker): if the chain's first
# response ran in a conversation, the conversation's items before it, then each response's input and output
# items, oldest response first; and their stored token counts, in the same order, as text (an array aggregate
# of the parts' arrays would nest them). The walk up the chain takes one primary-key lookup per response
# (LIMIT 1 keeps each step a correlated lookup, never a join planned from the recursive part's guessed size).
_CHAIN_HISTORY = Statement(
    f"""
    WITH RECURSIVE chain AS (
        SELECT id, previous_response_id, conversation_id, conversation_position, 0 AS depth
        FROM response WHERE id = $response_id AND tenant_id IS NOT DISTINCT FROM $tenant_id
        UNION ALL
        SELECT r.id, r.previous_response_id, r.conversation_id, r.conversation_position, c.depth + 1
        FROM chain c CROSS JOIN LATERAL (
            SELECT id, previous_response_id, conversation_id, conversation_position
            FROM response WHERE id = c.previous_response_id LIMIT 1
        ) r
    )
    SELECT string_agg(items, ',') AS history, string_agg(counts, ',') AS counts,
           (SELECT {_conversation_gone("")} FROM chain ORDER BY depth DESC LIMIT 1) AS prefix_gone
    FROM (
        SELECT 0 AS part, 0 AS depth, prefix.items, prefix.counts
        FROM (SELECT conversation_id, conversation_position FROM chain ORDER BY depth DESC LIMIT 1) root
        CROSS JOIN LATERAL (SELECT string_agg(body, ',') AS items,
                                   string_agg(coalesce(token_count, -1)::text, ',') AS counts FROM (
            SELECT body, token_count FROM item
            WHERE conversation_id = root.conversation_id AND position < root.conversation_position
            ORDER BY position) i) prefix
        UNION ALL
        SELECT 1, -c.depth, own.items, own.counts
        FROM chain c CROSS JOIN LATERAL (SELECT string_agg(body, ',') AS items,
                                                string_agg(coalesce(token_count, -1)::text, ',') AS counts FROM (
            SELECT body, token_count FROM item WHERE response_id = c.id ORDER BY is_output, ordinal) i) own
        ORDER BY part, depth
    ) history
    """
)

# -- output ids already held ----------------------------------------------------------------------------------
# Every finish first looks up its output items' ids among the tenant's items: one probe of item(tenant_id, id)
# each (LIMIT 1 keeps it a lookup by both columns: as a join, a plan made on an empty table read every item of
# the tenant). An upstream that reuses ids across turns would otherwise leave two items under one id: the items API
# reaches only the first, and every later turn sends the id twice, which OpenAI's API refuses. When any is held,
# the finish writes nothing and returns them (`held_ids`, its other column null); the caller gives those items
# ids of ours and runs it again (OutputIdsHeld). Ids the upstream mints are unique, so the second run is rare.


def _held(first_output: str) -> str:
    """A CTE: the ids in $ids from ordinal `first_output` + 1 on (the output items) that the tenant holds."""
    return f"""held AS MATERIALIZED (
        SELECT array_agg(u.id) AS ids FROM unnest($ids::text[]) WITH ORDINALITY AS u(id, ordinal)
        CROSS JOIN LATERAL (SELECT FROM item h WHERE h.tenant_id = $tenant_id AND h.id = u.id LIMIT 1) found
        WHERE u.ordinal > {first_output}
    )"""


_NONE_HELD = "(SELECT ids FROM held) IS NULL"
# The row a finish returns when it wrote nothing because of held ids: its first column null, then the ids.
_HELD_ROW = "SELECT NULL, ids FROM held WHERE ids IS NOT NULL"


class OutputIdsHeld(Exception):
    """A finish wrote nothing: items the tenant stored before hold these output ids."""

    def __init__(self, ids: Sequence[str]) -> None:
        super().__init__(f"output ids held already: {', '.join(ids)}")
        self.ids = frozenset(ids)


# -- finish in the conversation ----------------------------------------------------------------------------
# A conversation turn that still holds its claim: reserve $added positions at the end of the conversation and
# append the inputs and outputs there ($append false, a failed or cancelled turn: only release the claim),
# store the output items and the outcome, and free the claim. No row back when the claim was lost (it expired
# and was taken over): nothing is written then.

# Visible before its finish: its begin stored the response and its input items, which move to their place.
_FINISH_STORED_IN_CONVERSATION = Statement(
    f"""
    WITH {_held("0")},
    advanced AS (
        UPDATE conversation
        SET next_position = next_position + $added, item_count = item_count + $added, updated_at = now(),
            title = coalesce(title, $title), turn_response_id = NULL, turn_expires_at = NULL, turn_claimed_at = NULL,
            response_count = response_count + 1, input_tokens = input_tokens + $input_tokens,
            output_tokens = output_tokens + $output_tokens, cost = cost + $cost,
            last_model = $last_model, last_status = $status
        WHERE id = $conversation_id AND turn_response_id = $response_id AND {_NONE_HELD}
        RETURNING next_position - $added AS start
    ),
    attached AS (
        UPDATE item SET conversation_id = $conversation_id, position = advanced.start + item.ordinal,
                        token_count = ($input_counts::int[])[item.ordinal + 1]
        FROM advanced
        WHERE $append AND item.response_id = $response_id AND item.is_output = false
    ),
    items AS (
        INSERT INTO item (id, tenant_id, response_id, is_output, ordinal, conversation_id, position, thread_id,
                          type, role, status, body, text_content, token_count)
        SELECT u.id, $tenant_id, $response_id, true, u.ordinal - 1,
               CASE WHEN $append THEN $conversation_id END,
               CASE WHEN $append THEN advanced.start + $input_count + u.ordinal - 1 END,
               $conversation_id, u.type, u.role, u.status, u.body, u.text_content, u.token_count
        FROM advanced, unnest($ids::text[], $types::text[], $roles::text[], $statuses::text[], $bodies::text[],
                              $texts::text[], $token_counts::int[])
                              WITH ORDINALITY AS u(id, type, role, status, body, text_content, token_count, ordinal)
    ),
    completed AS (
        UPDATE response SET status = $status, upstream_id = $upstream_id, upstream_model = $upstream_model,
            service_tier = $service_tier,
            usage = $usage::jsonb, error = $error::jsonb, incomplete_details = $incomplete_details::jsonb,
            input_tokens = $input_tokens, output_tokens = $output_tokens, cost = $cost, completed_at = $completed_at
        FROM advanced WHERE response.id = $response_id
        RETURNING completed_at
    )
    SELECT completed_at, NULL::text[] AS held_ids FROM completed
    UNION ALL {_HELD_ROW}
    """
)

# The same for a streamed turn, which also stores its event log (for `starting_after` resumes): written by the
# statement that stores the outcome, the stored response and its log never disagree, and a resume after the end
# always finds the log. A separate statement rather than a conditional part: an INSERT that writes nothing still
# opens the log table and its index, every turn.
_FINISH_LOGGED_IN_CONVERSATION = Statement(
    f"""
    WITH {_held("0")},
    advanced AS (
        UPDATE conversation
        SET next_position = next_position + $added, item_count = item_count + $added, updated_at = now(),
            title = coalesce(title, $title), turn_response_id = NULL, turn_expires_at = NULL, turn_claimed_at = NULL,
            response_count = response_count + 1, input_tokens = input_tokens + $input_tokens,
            output_tokens = output_tokens + $output_tokens, cost = cost + $cost,
            last_model = $last_model, last_status = $status
        WHERE id = $conversation_id AND turn_response_id = $response_id AND {_NONE_HELD}
        RETURNING next_position - $added AS start
    ),
    attached AS (
        UPDATE item SET conversation_id = $conversation_id, position = advanced.start + item.ordinal,
                        token_count = ($input_counts::int[])[item.ordinal + 1]
        FROM advanced
        WHERE $append AND item.response_id = $response_id AND item.is_output = false
    ),
    items AS (
        INSERT INTO item (id, tenant_id, response_id, is_output, ordinal, conversation_id, position, thread_id,
                          type, role, status, body, text_content, token_count)
        SELECT u.id, $tenant_id, $response_id, true, u.ordinal - 1,
               CASE WHEN $append THEN $conversation_id END,
               CASE WHEN $append THEN advanced.start + $input_count + u.ordinal - 1 END,
               $conversation_id, u.type, u.role, u.status, u.body, u.text_content, u.token_count
        FROM advanced, unnest($ids::text[], $types::text[], $roles::text[], $statuses::text[], $bodies::text[],
                              $texts::text[], $token_counts::int[])
                              WITH ORDINALITY AS u(id, type, role, status, body, text_content, token_count, ordinal)
    ),
    completed AS (
        UPDATE response SET status = $status, upstream_id = $upstream_id, upstream_model = $upstream_model,
            service_tier = $service_tier,
            usage = $usage::jsonb, error = $error::jsonb, incomplete_details = $incomplete_details::jsonb,
            input_tokens = $input_tokens, output_tokens = $output_tokens, cost = $cost, completed_at = $completed_at
        FROM advanced WHERE response.id = $response_id
        RETURNING completed_at
    ),
    logged AS (
        INSERT INTO response_event_log (response_id, events_zlib, event_count)
        SELECT $response_id, $events::bytea, $event_count::int FROM completed
        ON CONFLICT (response_id) DO UPDATE
            SET events = NULL, events_zlib = excluded.events_zlib, event_count = excluded.event_count
    )
    SELECT completed_at, NULL::text[] AS held_ids FROM completed
    UNION ALL {_HELD_ROW}
    """
)

# Unseen: the finish stores the response row whole, and the input items ($input_count, the first items of the
# arrays) at their place in the conversation together with the outputs, in conversation order. One INSERT for
# both kinds opens the item table's indexes once. (Such a turn continues no previous response: `conversation`
# and `previous_response_id` exclude each other.)
_FINISH_UNSEEN_IN_CONVERSATION = Statement(
    f"""
    WITH {_held("$input_count")},
    advanced AS (
        UPDATE conversation
        SET next_position = next_position + $added, item_count = item_count + $added, updated_at = now(),
            title = coalesce(title, $title), turn_response_id = NULL, turn_expires_at = NULL, turn_claimed_at = NULL,
            response_count = response_count + 1, input_tokens = input_tokens + $input_tokens,
            output_tokens = output_tokens + $output_tokens, cost = cost + $cost,
            last_model = $last_model, last_status = $status
        WHERE id = $conversation_id AND turn_response_id = $response_id AND {_NONE_HELD}
        RETURNING next_position - $added AS start
    ),
    items AS (
        INSERT INTO item (id, tenant_id, response_id, is_output, ordinal, conversation_id, position, thread_id,
                          type, role, status, body, text_content, token_count)
        SELECT u.id, $tenant_id, $response_id, u.ordinal > $input_count,
               CASE WHEN u.ordinal > $input_count THEN u.ordinal - $input_count ELSE u.ordinal END - 1,
               CASE WHEN $append THEN $conversation_id END,
               CASE WHEN $append THEN advanced.start + u.ordinal - 1 END,
               $conversation_id, u.type, u.role, u.status, u.body, u.text_content, u.token_count
        FROM advanced, unnest($ids::text[], $types::text[], $roles::text[], $statuses::text[], $bodies::text[],
                              $texts::text[], $token_counts::int[])
                              WITH ORDINALITY AS u(id, type, role, status, body, text_content, token_count, ordinal)
    ),
    completed AS (
        INSERT INTO response (id, tenant_id, conversation_id, conversation_position, status, model, instructions,
                              params_json, metadata, background, stream, created_at, upstream_id, upstream_model,
                              usage, error, incomplete_details, input_tokens, output_tokens, cost, completed_at,
                              thread_id, request_id, service_tier, idempotency_key)
        SELECT $response_id, $tenant_id, $conversation_id, advanced.start, $status, $model, $instructions,
               $params_json, $metadata::jsonb, $background, $stream, $created_at, $upstream_id, $upstream_model,
               $usage::jsonb, $error::jsonb, $incomplete_details::jsonb, $input_tokens, $output_tokens, $cost,
               $completed_at, $conversation_id, $request_id, $service_tier, $idempotency_key
        FROM advanced
        RETURNING completed_at
    )
    SELECT completed_at, NULL::text[] AS held_ids FROM completed
    UNION ALL {_HELD_ROW}
    """
)

# -- finish outside a conversation (or after a lost claim: the items then stay outside it) -----------------

# The input items' token counts, stored by the begin as estimated, once the upstream's usage made them exact.
_INPUTS_COUNTED = """
        UPDATE item SET token_count = c.token_count
        FROM unnest($input_counts::int[]) WITH ORDINALITY AS c(token_count, ordinal)
        WHERE item.response_id = $response_id AND NOT item.is_output AND item.ordinal = c.ordinal - 1
          AND item.token_count IS DISTINCT FROM c.token_count AND EXISTS (SELECT FROM completed)
"""

# Both also add the turn to its chain's totals (service/threads/totals.py; nothing for a conversation's thread).
# Both write only over a response still running: one failed meanwhile because its process was taken for dead, or
# its claim was taken over, keeps that outcome, and a late finish of its old holder writes nothing (no output
# items, no token counts, no second count in the chain's totals, no event log); it returns no row then. Each
# returns the chain whose pending turns it saw (chain_to_fold), which finish() adds after it.
_FINISH_STORED = Statement(
    f"""
    WITH {_held("0")},
    {chain_totals.CHAIN_ROW_OF_RESPONSE},
    completed AS (
        UPDATE response SET status = $status, upstream_id = $upstream_id, upstream_model = $upstream_model,
            service_tier = $service_tier,
            usage = $usage::jsonb, error = $error::jsonb, incomplete_details = $incomplete_details::jsonb,
            input_tokens = $input_tokens, output_tokens = $output_tokens, cost = $cost, completed_at = $completed_at,
            pending_chain_id = {chain_totals.PENDING_CHAIN_OF_RESPONSE}
        WHERE id = $response_id AND status = ANY($running::text[]) AND {_NONE_HELD}
        RETURNING completed_at
    ),
    items AS (
        INSERT INTO item (id, tenant_id, response_id, is_output, ordinal, thread_id, type, role, status, body,
                          text_content, token_count)
        SELECT u.id, $tenant_id, $response_id, true, u.ordinal - 1, {chain_totals.THREAD_OF_RESPONSE}, u.type,
               u.role, u.status, u.body, u.text_content, u.token_count
        FROM completed, unnest($ids::text[], $types::text[], $roles::text[], $statuses::text[], $bodies::text[],
                               $texts::text[], $token_counts::int[])
                               WITH ORDINALITY AS u(id, type, role, status, body, text_content, token_count, ordinal)
    ),
    inputs_counted AS ({_INPUTS_COUNTED}){chain_totals.ADD_TO_CHAIN}
    SELECT {chain_totals.CHAIN_TO_FOLD} AS chain_to_fold, NULL::text[] AS held_ids FROM completed
    UNION ALL {_HELD_ROW}
    """
)

_FINISH_LOGGED = Statement(
    f"""
    WITH {_held("0")},
    {chain_totals.CHAIN_ROW_OF_RESPONSE},
    completed AS (
        UPDATE response SET status = $status, upstream_id = $upstream_id, upstream_model = $upstream_model,
            service_tier = $service_tier,
            usage = $usage::jsonb, error = $error::jsonb, incomplete_details = $incomplete_details::jsonb,
            input_tokens = $input_tokens, output_tokens = $output_tokens, cost = $cost, completed_at = $completed_at,
            pending_chain_id = {chain_totals.PENDING_CHAIN_OF_RESPONSE}
        WHERE id = $response_id AND status = ANY($running::text[]) AND {_NONE_HELD}
        RETURNING completed_at
    ),
    items AS (
        INSERT INTO item (id, tenant_id, response_id, is_output, ordinal, thread_id, type, role, status, body,
                          text_content, token_count)
        SELECT u.id, $tenant_id, $response_id, true, u.ordinal - 1, {chain_totals.THREAD_OF_RESPONSE}, u.type,
               u.role, u.status, u.body, u.text_content, u.token_count
        FROM completed, unnest($ids::text[], $types::text[], $roles::text[], $statuses::text[], $bodies::text[],
                               $texts::text[], $token_counts::int[])
                               WITH ORDINALITY AS u(id, type, role, status, body, text_content, token_count, ordinal)
    ),
    inputs_counted AS ({_INPUTS_COUNTED}){chain_totals.ADD_TO_CHAIN},
    logged AS (
        INSERT INTO response_event_log (response_id, events_zlib, event_count)
        SELECT $response_id, $events::bytea, $event_count::int FROM completed
        ON CONFLICT (response_id) DO UPDATE
            SET events = NULL, events_zlib = excluded.events_zlib, event_count = excluded.event_count
        RETURNING response_id
    )
    SELECT {chain_totals.CHAIN_TO_FOLD} AS chain_to_fold, NULL::text[] AS held_ids FROM logged
    UNION ALL {_HELD_ROW}
    """
)

# An unseen turn stored whole: one continuing a previous response, or a conversation turn whose claim was lost
# (then outside the conversation). It names its conversation and previous response only if they still exist:
# the conversation may have been deleted once the claim expired, the previous response once the turn's note
# as its running child expired (a delete meanwhile only hides it). Its thread is the conversation's, else its
# parent's, to whose chain totals it adds (service/threads/totals.py). The note goes in the same statement.
_FINISH_UNSEEN = Statement(
    f"""
    WITH {_held("$input_count")},
    thread AS (SELECT {chain_totals.THREAD_OF_NEW_RESPONSE} AS id WHERE {_NONE_HELD}),
    ended AS (DELETE FROM running_chain_turn WHERE response_id = $response_id AND {_NONE_HELD}),
    items AS (
        INSERT INTO item (id, tenant_id, response_id, is_output, ordinal, thread_id, type, role, status, body,
                          text_content, token_count)
        SELECT u.id, $tenant_id, $response_id, u.ordinal > $input_count,
               CASE WHEN u.ordinal > $input_count THEN u.ordinal - $input_count ELSE u.ordinal END - 1,
               thread.id, u.type, u.role, u.status, u.body, u.text_content, u.token_count
        FROM thread, unnest($ids::text[], $types::text[], $roles::text[], $statuses::text[], $bodies::text[],
                            $texts::text[], $token_counts::int[])
                            WITH ORDINALITY AS u(id, type, role, status, body, text_content, token_count, ordinal)
    ){chain_totals.ADD_UNSEEN_TO_CHAIN},
    stored AS (
        INSERT INTO response (id, tenant_id, conversation_id, conversation_position, previous_response_id, status,
                              model, instructions, params_json, metadata, background, stream, created_at,
                              upstream_id, upstream_model, usage, error, incomplete_details, input_tokens,
                              output_tokens, cost, completed_at, thread_id, request_id, service_tier,
                              idempotency_key, pending_chain_id)
        SELECT $response_id, $tenant_id, (SELECT id FROM conversation WHERE id = $conversation_id),
               $conversation_position, (SELECT id FROM response WHERE id = $previous_response_id), $status, $model,
               $instructions, $params_json, $metadata::jsonb, $background, $stream, $created_at, $upstream_id,
               $upstream_model, $usage::jsonb, $error::jsonb, $incomplete_details::jsonb, $input_tokens,
               $output_tokens, $cost, $completed_at, thread.id, $request_id, $service_tier, $idempotency_key,
               {chain_totals.PENDING_CHAIN_OF_NEW_RESPONSE}
        FROM thread
        RETURNING id
    )
    SELECT {chain_totals.CHAIN_TO_FOLD} AS chain_to_fold, NULL::text[] AS held_ids FROM stored
    UNION ALL {_HELD_ROW}
    """
)

# The pending turns of the chain a finish took the row of, after its commit (service/threads/totals.py).
_FOLD_PENDING_TURNS = Statement(chain_totals.fold_pending("$chain_id"))

# -- the rest ----------------------------------------------------------------------------------------------

_FINISHED_AT = Statement("SELECT completed_at = $completed_at FROM response WHERE id = $response_id")

# A takeover's: the previous holder's response, if its begin stored it, fails and is counted in its conversation
# (whose row the taking turn holds), as a turn failing on its own is.
_FAIL_RUNNING = Statement(
    """
    WITH failed AS (
        UPDATE response SET status = 'failed', error = $error::jsonb, completed_at = now()
        WHERE id = $response_id AND status = ANY($running::text[])
        RETURNING conversation_id
    ),
    counted AS (
        UPDATE conversation c SET response_count = c.response_count + 1
        FROM failed WHERE c.id = failed.conversation_id
    )
    SELECT FROM failed
    """
)


# A conversation turn that lost its claim before its response was stored (an unseen turn) was still one of the
# conversation's turns: counted in its responses, as _FAIL_RUNNING counts one whose response its begin stored.
# Not in _FINISH_UNSEEN itself: every turn continuing a previous response runs that one.
_COUNT_LOST_CLAIM_TURN = Statement(
    "UPDATE conversation SET response_count = response_count + 1 WHERE id = $conversation_id"
)


# The last resort when the database refuses a turn's outcome even as a bare failure: fail the response if its
# begin stored it, and release the conversation's claim, so that the conversation takes turns again now rather
# than at the claim's expiry. Nothing else is written (no items, usage nor event log).
_ABANDON = Statement(
    """
    WITH released AS (
        UPDATE conversation SET turn_response_id = NULL, turn_expires_at = NULL, turn_claimed_at = NULL,
            last_status = 'failed'
        WHERE id = $conversation_id AND turn_response_id = $response_id
    )
    UPDATE response SET status = 'failed', error = $error::jsonb, completed_at = now()
    WHERE id = $response_id AND status = ANY($running::text[])
    RETURNING id
    """
)


def json_text(value: Any) -> str | None:
    return None if value is None else msgspec.json.encode(value).decode()


@dataclass(frozen=True)
class NewResponse:
    """The response row a turn starts with."""

    response_id: str
    tenant_id: str
    conversation_id: str | None
    previous_response_id: str | None
    status: str
    model: str
    instructions: str | None
    params_json: str
    metadata: dict[str, str]
    background: bool
    stream: bool
    request_id: str | None = None  # the X-Request-Id of the request that started the turn
    # The Idempotency-Key the request came with: a key its process could not complete is answered by this turn.
    idempotency_key: str | None = None

    @property
    def visible_before_finish(self) -> bool:
        """A streamed or background response's id is known to its client before the turn ends."""
        return self.stream or self.background

    def params(self) -> dict[str, Any]:
        return {
            "response_id": self.response_id,
            "tenant_id": self.tenant_id,
            "conversation_id": self.conversation_id,
            "previous_response_id": self.previous_response_id,
            "status": self.status,
            **self.row_params(),
        }

    def row_params(self) -> dict[str, Any]:
        """The request's columns, which an unseen turn's finish stores."""
        return {
            "model": self.model,
            "instructions": self.instructions,
            "params_json": self.params_json,
            "metadata": json_text(self.metadata),
            "background": self.background,
            "stream": self.stream,
            "request_id": self.request_id,
            "idempotency_key": self.idempotency_key,
        }


@dataclass(frozen=True)
class Claimed:
    previous_holder: str | None
    created_at: datetime
    position: int  # where the turn's items go in the conversation (its next_position when claimed)
    # The conversation's item texts joined by commas ("" for an empty one), as of `as_of` (its next_position
    # and item_count when claimed); as_of is None when the history had to be read after the claim, when
    # another writer may have added to it.
    history: str
    as_of: CachedHistory | None
    item_count: int = 0  # the conversation's items when claimed
    counts: array[int] = field(default_factory=lambda: array("q"))  # the stored token count of each item


async def claim_and_begin(
    db: Any, response: NewResponse, inputs: Sequence[NewItem], *, ttl_seconds: float, known: CachedHistory | None
) -> Claimed | None:
    """None when the conversation is missing, not the tenant's, or claimed by a live turn (nothing written).
    `known` is an earlier state of the conversation's history: only the items after it are read. The response
    and its `inputs` are stored only when the response is visible before its finish; otherwise the finish
    stores them."""
    claim = {
        "ttl": ttl_seconds,
        "response_id": response.response_id,
        "conversation_id": response.conversation_id,
        "tenant_id": response.tenant_id,
        "history_from": 0 if known is None else known.next_position,
    }
    if response.visible_before_finish:
        values = {**claim, **response.params(), **item_arrays(inputs)}
        row = await db.fetchrow(_CLAIM_AND_STORE.sql, *_CLAIM_AND_STORE.args(values))
    else:
        row = await db.fetchrow(_CLAIM_ONLY.sql, *_CLAIM_ONLY.args(claim))
    if row is None:
        return None
    tail = row["history"] or ""
    # Read again, the history is from a later snapshot than the claim's counts: it is not given as of them.
    # `known` is dropped when an item before its end was deleted since.
    if not row["history_is_current"] or (known and known.item_count + row["tail_count"] != row["item_count"]):
        history, counts = await conversation_history(db, response.conversation_id)
        return Claimed(
            row["previous_holder"], row["created_at"], row["next_position"], history, None, row["item_count"], counts
        )
    history = tail if known is None else joined(known.text, tail)
    counts = stored_counts(row["counts"])
    if known is not None:
        counts = known.counts + counts
    as_of = CachedHistory(row["next_position"], row["item_count"], history, counts)
    return Claimed(
        row["previous_holder"], row["created_at"], row["next_position"], history, as_of, row["item_count"], counts
    )


async def begin(db: Any, response: NewResponse, inputs: Sequence[NewItem]) -> tuple[datetime, int]:
    """Store a response outside any conversation, in progress, with its input items. Returns its created_at and
    the tenant's history generation (service/responses/chain_cache.py)."""
    values = {**response.params(), **item_arrays(inputs), "lazy_commit": not response.visible_before_finish}
    row = await db.fetchrow(_BEGIN.sql, *_BEGIN.args(values))
    return row["created_at"], row["generation"]


async def conversation_history(db: Any, conversation_id: str | None) -> tuple[str, array[int]]:
    """The conversation's items as one text, and their stored token counts."""
    row = await db.fetchrow(_HISTORY.sql, *_HISTORY.args({"conversation_id": conversation_id, "history_from": 0}))
    return row["history"] or "", stored_counts(row["counts"])


@dataclass(frozen=True)
class Ancestor:
    """A response on the way up a chain from the previous response (itself included), with its own items."""

    id: str
    previous_response_id: str | None
    # Set only on a chain's first response, when it ran in a conversation ('' when that conversation is gone).
    conversation_id: str | None
    items: str  # its input then output item texts, joined by commas
    counts: array[int]  # their stored token counts


@dataclass(frozen=True)
class Previous:
    status: str
    generation: int  # the tenant's history generation, in the same snapshot
    now: datetime
    ancestors: list[Ancestor]  # the previous response first; empty unless asked for


@dataclass(frozen=True)
class RunningTurn:
    """A stored turn that no client sees before its end, noted as its previous response's running child and
    listed on its chain's row while it runs."""

    response_id: str
    ttl_seconds: float  # how long the note and listing last if its process dies (TURN_LOCK_TTL, as a claim's)


async def read_previous(
    db: Any, tenant_id: str, previous_id: str, *, ancestors: bool, running: RunningTurn | None = None
) -> Previous | None:
    """None when the tenant has no such (undeleted) response. `running`: note that turn as the response's
    running child and list it on the chain's row (only when the previous response can be continued)."""
    values: dict[str, Any] = {"previous_response_id": previous_id, "tenant_id": tenant_id}
    if running is None:
        statement = _PREVIOUS_AND_ANCESTORS if ancestors else _PREVIOUS
    else:
        statement = _PREVIOUS_AND_ANCESTORS_MARKING if ancestors else _PREVIOUS_MARKING
        answered = list(ANSWERED)
        values.update(response_id=running.response_id, ttl=running.ttl_seconds, answered=answered)
    row = await db.fetchrow(statement.sql, *statement.args(values))
    if row is None:
        return None
    found = []
    if ancestors:
        for level in range(_ANCESTOR_LEVELS):
            if row[f"id{level}"] is None:
                break
            found.append(
                Ancestor(
                    row[f"id{level}"],
                    row[f"previous{level}"],
                    row[f"conversation{level}"],
                    row[f"items{level}"] or "",
                    stored_counts(row[f"counts{level}"]),
                )
            )
    return Previous(row["status"], row["generation"], row["now"], found)


class ConversationHistoryGone(Exception):
    """The chain began in a conversation since deleted: the history before its first response is gone."""


async def chain_history(db: Any, tenant_id: str, response_id: str) -> tuple[str, array[int]]:
    """The whole history a child of the response sends upstream ("" when there is none), and the stored token
    count of each of its items. Raises ConversationHistoryGone (HISTORY_GONE says when)."""
    values = {"response_id": response_id, "tenant_id": tenant_id}
    row = await db.fetchrow(_CHAIN_HISTORY.sql, *_CHAIN_HISTORY.args(values))
    if row is not None and row["prefix_gone"]:
        raise ConversationHistoryGone(response_id)
    counts = row["counts"] if row is not None else None
    return (row["history"] if row is not None else None) or "", array(
        "q", map(int, counts.split(","))
    ) if counts else array("q")


# A turn listed by its begin (RunningTurn) and then refused before anything of it was stored: its note as a
# running child and its entry on its chain's row go, rather than keep the chain in progress until they expire.
# Only on that refusal's path, so it waits for the chain's row where a begin would skip it.
_UNLIST_RUNNING = Statement(
    """
    WITH ended AS (DELETE FROM running_chain_turn WHERE response_id = $response_id RETURNING previous_response_id)
    UPDATE response_chain SET
        turn_response_ids = array_remove(response_chain.turn_response_ids, $response_id),
        turn_expires_at = CASE WHEN response_chain.turn_response_ids <@ ARRAY[$response_id]
            THEN NULL ELSE response_chain.turn_expires_at END
    FROM ended, response p
    WHERE p.id = ended.previous_response_id AND response_chain.id = p.thread_id
        AND $response_id = ANY(response_chain.turn_response_ids)
    """
)


async def unlist_running(db: Any, running: RunningTurn) -> None:
    """Undo what read_previous(..., running=running) noted, for a turn refused before its finish."""
    await db.execute(_UNLIST_RUNNING.sql, *_UNLIST_RUNNING.args({"response_id": running.response_id}))


@dataclass(frozen=True)
class Outcome:
    """What a finished turn stores on its response."""

    response_id: str
    tenant_id: str
    status: str
    upstream_id: str | None
    upstream_model: str | None
    service_tier: str | None
    usage: dict[str, Any] | None
    error: dict[str, Any] | None
    incomplete_details: dict[str, Any] | None
    input_tokens: int
    output_tokens: int
    cost: Decimal
    completed_at: datetime

    def params(self) -> dict[str, Any]:
        return {
            "response_id": self.response_id,
            "tenant_id": self.tenant_id,
            "status": self.status,
            "upstream_id": self.upstream_id,
            "upstream_model": self.upstream_model,
            "service_tier": self.service_tier,
            "usage": json_text(self.usage),
            "error": json_text(self.error),
            "incomplete_details": json_text(self.incomplete_details),
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost": self.cost,
            "completed_at": self.completed_at,
        }


@dataclass(frozen=True)
class EventLog:
    """A streamed response's events as stored: its SSE frames, terminal one included, packed
    (service/responses/frame_log.py)."""

    events: bytes
    event_count: int


@dataclass(frozen=True)
class Appended:
    """How a conversation turn ends in its conversation."""

    conversation_id: str
    append: bool  # false: the turn failed or was cancelled, so only the claim is released
    input_count: int
    input_counts: Sequence[int]  # the input items' token counts, exact when the upstream reported usage
    title: str | None
    last_model: str | None


@dataclass(frozen=True)
class Unseen:
    """What the finish of a turn no client saw before its end (in a conversation, or continuing a previous
    response) stores besides its outcome and output items: the response row and the input items, which its
    begin did not store."""

    response: NewResponse
    created_at: datetime
    conversation_position: int | None  # where the conversation's claim placed it; None outside one
    inputs: Sequence[NewItem]

    def params(self, outputs: Sequence[NewItem]) -> dict[str, Any]:
        return {
            **self.response.row_params(),
            "created_at": self.created_at,
            "input_count": len(self.inputs),
            **item_arrays([*self.inputs, *outputs]),
        }


async def finish_in_conversation(
    db: Any,
    outcome: Outcome,
    appended: Appended,
    outputs: Sequence[NewItem],
    log: EventLog | None = None,
    *,
    unseen: Unseen | None = None,
) -> bool:
    """False when the turn no longer holds its claim (nothing written). `unseen`: the response row and input
    items to store, when the begin did not store them (such a turn has no event log). Raises OutputIdsHeld
    (nothing written) when the tenant's items hold any output id."""
    values = {
        **outcome.params(),
        "conversation_id": appended.conversation_id,
        "added": appended.input_count + len(outputs) if appended.append else 0,
        "title": appended.title,
        "last_model": appended.last_model,
        "append": appended.append,
    }
    if unseen is not None:
        _no_log_when_unseen(log)
        statement = _FINISH_UNSEEN_IN_CONVERSATION
        values.update(unseen.params(outputs))
    else:
        statement = _FINISH_STORED_IN_CONVERSATION if log is None else _FINISH_LOGGED_IN_CONVERSATION
        values.update(item_arrays(outputs), input_count=appended.input_count, input_counts=list(appended.input_counts))
        if log is not None:
            values.update(events=log.events, event_count=log.event_count)
    stored = await db.fetchrow(statement.sql, *statement.args(values))
    _refuse_held(stored)
    return stored is not None


async def finish(
    db: Any,
    outcome: Outcome,
    outputs: Sequence[NewItem],
    log: EventLog | None = None,
    *,
    unseen: Unseen | None = None,
    input_counts: Sequence[int] = (),
) -> bool:
    """Outside any conversation, or after a lost claim (the items then stay outside the conversation).
    `unseen`: as for finish_in_conversation. `input_counts`: the token counts of the input items the begin
    stored, now that they may be exact (an unseen turn's are on its items). False when the response had already
    ended (failed by a takeover): nothing is written then. Raises OutputIdsHeld as finish_in_conversation does.
    An unseen turn that names a conversation lost its claim there: it is counted in the conversation's responses
    in a second statement (its taker found no response of it to count; a crash between the two misses the count).
    A finish that took its chain's row and saw turns of the chain pending adds them in a second statement, once
    its own has committed (threads/totals.py)."""
    values = outcome.params()
    if unseen is not None:
        _no_log_when_unseen(log)
        statement = _FINISH_UNSEEN
        values.update(
            unseen.params(outputs),
            conversation_id=unseen.response.conversation_id,
            conversation_position=unseen.conversation_position,
            previous_response_id=unseen.response.previous_response_id,
        )
    else:
        statement = _FINISH_STORED if log is None else _FINISH_LOGGED
        values.update(item_arrays(outputs), input_counts=list(input_counts), running=list(RUNNING))
        if log is not None:
            values.update(events=log.events, event_count=log.event_count)
    try:
        stored = await db.fetchrow(statement.sql, *statement.args(values))
    except ForeignKeyViolationError as exc:
        # The previous response of an unseen turn was being deleted when the statement began (it saw the row,
        # then waited for the delete; possible only once the turn's note as its running child expired): run
        # again, it no longer sees the row and stores no link, as it does when the delete committed first. The
        # answer is kept either way.
        if unseen is None or exc.constraint_name != PREVIOUS_RESPONSE_FK:
            raise
        stored = await db.fetchrow(statement.sql, *statement.args(values))
    _refuse_held(stored)
    if stored is not None and stored["chain_to_fold"] is not None:
        await db.execute(_FOLD_PENDING_TURNS.sql, *_FOLD_PENDING_TURNS.args({"chain_id": stored["chain_to_fold"]}))
    if stored is not None and unseen is not None and unseen.response.conversation_id is not None:
        values = {"conversation_id": unseen.response.conversation_id}
        await db.execute(_COUNT_LOST_CLAIM_TURN.sql, *_COUNT_LOST_CLAIM_TURN.args(values))
    return stored is not None


def _refuse_held(stored: Any) -> None:
    if stored is not None and stored["held_ids"] is not None:
        raise OutputIdsHeld(stored["held_ids"])


def _no_log_when_unseen(log: EventLog | None) -> None:
    if log is not None:
        raise ValueError("only a streamed turn has an event log, and it is visible before its finish")


async def finished_at(db: Any, response_id: str, completed_at: datetime) -> bool:
    """Whether the response is stored as finished at exactly `completed_at` (each turn computes its own once)."""
    values = {"response_id": response_id, "completed_at": completed_at}
    return bool(await db.fetchval(_FINISHED_AT.sql, *_FINISHED_AT.args(values)))


async def fail_running_response(db: Any, response_id: str, error: dict[str, Any]) -> None:
    values = {"response_id": response_id, "error": json_text(error), "running": list(RUNNING)}
    await db.execute(_FAIL_RUNNING.sql, *_FAIL_RUNNING.args(values))


async def abandon(db: Any, response_id: str, conversation_id: str | None, error: dict[str, Any]) -> bool:
    """Whether a stored response was failed (an unseen turn's never was: its finish stores it)."""
    values = {
        "response_id": response_id,
        "conversation_id": conversation_id,
        "error": json_text(error),
        "running": list(RUNNING),
    }
    return await db.fetchval(_ABANDON.sql, *_ABANDON.args(values)) is not None
