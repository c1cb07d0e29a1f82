"""A response chain's totals (response_chain), kept by the turn path as the conversation's counters are: the
parts the turn's begin and finish statements (responses/turn_store.py) add to themselves, so keeping them costs
no extra round trip. Parameters are the statements' own ($response_id, $model, the item arrays, ...)."""

from __future__ import annotations

# The first user words of the turn's input, as conversations/repository.title_from makes a title.
_FIRST_USER_WORDS = """(
    SELECT CASE WHEN length(words) <= 80 THEN words ELSE left(words, 79) || '…' END
    FROM (SELECT regexp_replace(btrim(t.text), '\\s+', ' ', 'g') AS words
          FROM unnest($types::text[], $roles::text[], $texts::text[]) AS t(type, role, text)
          WHERE t.type = 'message' AND t.role = 'user' AND btrim(t.text) <> '' LIMIT 1) first
)"""

# In a begin whose CTE `stored` returned the new response's (created_at, thread_id): a response that starts
# its own thread (no conversation, no parent) starts a chain.
START_CHAIN = f"""
    INSERT INTO response_chain (id, tenant_id, metadata, title, created_at, updated_at, item_count, last_model,
                                last_status)
    SELECT $response_id, $tenant_id, $metadata::jsonb, {_FIRST_USER_WORDS}, stored.created_at, stored.created_at,
           cardinality($ids::text[]), $model, $status
    FROM stored WHERE stored.thread_id = $response_id
"""

# The thread of a new response outside any conversation's claim: the conversation's (a lost claim's), else its
# parent's (a chain's, or the conversation's that a chain continues), else its own (it starts a chain).
THREAD_OF_NEW_RESPONSE = (
    "coalesce($conversation_id, (SELECT p.thread_id FROM response p WHERE p.id = $previous_response_id), $response_id)"
)

# The thread of a response the begin stored.
THREAD_OF_RESPONSE = "(SELECT r.thread_id FROM response r WHERE r.id = $response_id)"

# -- a finish adds its turn to its chain's totals, without waiting for the chain's row --------------------------
# Every branch of a chain adds to the same row, and many clients branching from one response finish together: a
# finish that waited for the row would wait for the other finishes' commits one after another. So a finish takes
# the row only when no other statement holds it (chain_row). When it is held, the finish marks its response
# pending (response.pending_chain_id, `pending_chain`) and ends. A finish that took the row and saw pending turns
# (CHAIN_TO_FOLD) adds them once it has committed, in a statement of their own (fold_pending); the heartbeat's
# sweep runs the same statement for those that no later finish saw. Until then the chain's totals count them
# out, and its listing may show it in progress (they stay on its running turns). Adding them in the finish
# itself would put an UPDATE of `response` in every chain turn's finish, set up at every execution even when it
# updates nothing (docs/benchmarks.md measures the difference).


def chain_row(thread: str) -> str:
    """A CTE: the id of the chain `thread` (an SQL expression), locked, when it is a chain and its row is free."""
    return f"""chain_row AS MATERIALIZED (
        SELECT ch.id FROM response_chain ch WHERE ch.id = {thread} FOR NO KEY UPDATE SKIP LOCKED
    )"""


def pending_chain(thread: str) -> str:
    """The finishing response's pending_chain_id: its thread, when that is a chain whose row another statement
    held; else NULL."""
    return (
        "CASE WHEN NOT EXISTS (SELECT FROM chain_row)"
        f" AND EXISTS (SELECT FROM response_chain pc WHERE pc.id = {thread}) THEN {thread} END"
    )


# In a finish's result: the chain whose row it took, when turns of that chain are pending (committed before the
# finish began), for the caller to fold once the finish has committed; else NULL. Found by equality on
# pending_chain_id, which only the partial index of pending turns holds: that index scan is the cheapest plan at
# every table size, the empty tables a new connection may plan on included (a sequential scan of `response` would
# then be kept by its cached plan for as long as the table has no statistics).
CHAIN_TO_FOLD = """(
    SELECT chain_row.id FROM chain_row WHERE EXISTS (SELECT FROM response p WHERE p.pending_chain_id = chain_row.id)
)"""


def _turn_added(*, items: str, model: str) -> str:
    """The SET list of a chain's row (response_chain) adding the finishing turn (`items` and `model` as SQL, the
    rest the finish's parameters). The chain's last activity is its latest completion, never moved back; the turn
    is taken off its running turns (MARK_RUNNING_TURN), and their expiry cleared when it was the last."""
    return f"""
            updated_at = greatest(response_chain.updated_at, $completed_at),
            turn_response_ids = array_remove(response_chain.turn_response_ids, $response_id),
            turn_expires_at = CASE WHEN response_chain.turn_response_ids <@ ARRAY[$response_id]
                THEN NULL ELSE response_chain.turn_expires_at END,
            response_count = response_chain.response_count + 1,
            item_count = response_chain.item_count + {items},
            input_tokens = response_chain.input_tokens + $input_tokens,
            output_tokens = response_chain.output_tokens + $output_tokens,
            cost = response_chain.cost + $cost,
            last_status = $status,
            last_model = {model}"""


# In a finish of a response the begin stored, first in its WITH: the chain of its thread (none for a response in a
# conversation's thread). Its CTE `completed` sets pending_chain_id = PENDING_CHAIN_OF_RESPONSE.
CHAIN_ROW_OF_RESPONSE = chain_row("(SELECT r.thread_id FROM response r WHERE r.id = $response_id)")
PENDING_CHAIN_OF_RESPONSE = pending_chain("response.thread_id")

# Then, once `completed` returned a row (its outcome stored, its outputs in the item arrays): add the turn to its
# chain's totals. Its inputs were counted at the begin only for the chain's first response.
ADD_TO_CHAIN = f""",
    chain AS (
        UPDATE response_chain SET {
    _turn_added(
        items="cardinality($ids::text[]) + CASE WHEN response_chain.id = $response_id THEN 0 ELSE"
        " (SELECT count(*) FROM item i WHERE i.response_id = $response_id AND NOT i.is_output) END",
        model="coalesce($upstream_model, (SELECT r.model FROM response r WHERE r.id = $response_id))",
    )
}
        FROM completed, chain_row
        WHERE response_chain.id = chain_row.id
    )"""

# In the begin of a stored turn that continues a chain and that no client sees before its end (CTE `previous`
# returned the previous response's status and thread_id): list the turn on its chain's row until its finish,
# as a conversation turn's claim marks the conversation; only when the previous response can be continued
# (else the turn is refused at once). Turns listed past their expiry are dropped: their process stopped
# without a reaper seeing it. Listing it twice (a begin that reads again) keeps one entry. The expiry is the
# latest of the listed turns' (processes may run with different TURN_LOCK_TTL): never shortened by a new one.
# A begin never waits for the row: when another turn's begin or finish holds it (many clients branching from
# one response), the turn goes unlisted rather than queueing every begin behind every other (the chain then
# most likely shows in_progress from those turns; an unlisted turn's finish removes nothing).
MARK_RUNNING_TURN = """
    UPDATE response_chain SET
        turn_response_ids = array_append(array_remove(
            CASE WHEN turn_expires_at > now() THEN turn_response_ids ELSE '{}' END, $response_id), $response_id),
        turn_expires_at = greatest(CASE WHEN turn_expires_at > now() THEN turn_expires_at END,
                                   now() + make_interval(secs => $ttl))
    FROM (SELECT ch.id FROM response_chain ch, previous
          WHERE ch.id = previous.thread_id AND previous.status = ANY($answered::text[])
          FOR UPDATE OF ch SKIP LOCKED) free
    WHERE response_chain.id = free.id
"""

# In the finish of a response no client saw before its end (stored whole there, its inputs and outputs in the
# item arrays, its thread in CTE `thread`) that continues a previous response: add it to its chain's totals, and
# take it off the chain's running turns. The response it inserts sets pending_chain_id = PENDING_CHAIN_OF_NEW_RESPONSE.
ADD_UNSEEN_TO_CHAIN = f""",
    {chain_row("(SELECT id FROM thread)")},
    chain AS (
        UPDATE response_chain SET {
    _turn_added(items="cardinality($ids::text[])", model="coalesce($upstream_model, $model)")
}
        FROM chain_row WHERE response_chain.id = chain_row.id
    )"""
PENDING_CHAIN_OF_NEW_RESPONSE = pending_chain("thread.id")


def fold_pending(thread: str) -> str:
    """For one chain (`thread`, an SQL expression): add its pending turns to its totals when its row is free
    (else they are left to the finish that holds it, or the next sweep), and take them off pending. Run by the
    finish that saw them (responses/turn_store.py) and by the heartbeat's sweep (repository.py). Returns the
    chain's id when it added any.

    What they add: the items each stored (a chain's first response's inputs were counted when the chain started,
    START_CHAIN), its usage and cost; the latest of them to complete, when it completed after the chain's last
    activity, gives the chain its last status and model. A pending response locked by another statement (a
    delete of it) is left as it is. Both reads find the pending turns by equality on pending_chain_id
    (CHAIN_TO_FOLD says why)."""
    return f"""
    WITH {chain_row(thread)},
    pending AS MATERIALIZED (
        SELECT r.id FROM response r
        WHERE r.pending_chain_id = (SELECT id FROM chain_row)
        FOR NO KEY UPDATE OF r SKIP LOCKED
    ),
    folded AS (
        UPDATE response r SET pending_chain_id = NULL
        WHERE r.pending_chain_id = (SELECT id FROM chain_row) AND r.id = ANY(ARRAY(SELECT id FROM pending))
        RETURNING r.id, r.thread_id, r.status, r.completed_at, coalesce(r.upstream_model, r.model) AS model,
                  r.input_tokens, r.output_tokens, r.cost,
                  (SELECT count(*) FROM item i
                   WHERE i.response_id = r.id AND (i.is_output OR r.id <> r.thread_id)) AS items
    ),
    f AS (
        SELECT thread_id, count(*) AS responses, sum(items) AS items, sum(input_tokens) AS input_tokens,
               sum(output_tokens) AS output_tokens, sum(cost) AS cost, max(completed_at) AS latest,
               (array_agg(status ORDER BY completed_at DESC))[1] AS status,
               (array_agg(model ORDER BY completed_at DESC))[1] AS model, array_agg(id) AS ids
        FROM folded GROUP BY thread_id
    )
    UPDATE response_chain SET
        updated_at = greatest(response_chain.updated_at, f.latest),
        turn_response_ids = ARRAY(SELECT t FROM unnest(response_chain.turn_response_ids) t WHERE t <> ALL(f.ids)),
        turn_expires_at = CASE WHEN response_chain.turn_response_ids <@ f.ids
            THEN NULL ELSE response_chain.turn_expires_at END,
        response_count = response_chain.response_count + f.responses,
        item_count = response_chain.item_count + f.items,
        input_tokens = response_chain.input_tokens + f.input_tokens,
        output_tokens = response_chain.output_tokens + f.output_tokens,
        cost = response_chain.cost + f.cost,
        last_status = CASE WHEN f.latest > response_chain.updated_at THEN f.status ELSE response_chain.last_status END,
        last_model = CASE WHEN f.latest > response_chain.updated_at THEN f.model ELSE response_chain.last_model END
    FROM chain_row JOIN f ON f.thread_id = chain_row.id
    WHERE response_chain.id = chain_row.id
    RETURNING response_chain.id
"""
