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

# In a finish of a response the begin stored (CTE `completed` returns a row once its outcome is stored), its
# outputs in the item arrays: add the turn to its chain's totals. A response in a conversation's thread has
# no chain row, and updates nothing. Its inputs were counted at the begin only for the chain's first response.
# The chain's last activity is its latest completion (the time the turn's answer stores), never moved back.
ADD_TO_CHAIN = f""",
    chain AS (
        UPDATE response_chain SET updated_at = greatest(response_chain.updated_at, $completed_at),
            response_count = response_count + 1,
            item_count = item_count + cardinality($ids::text[]) + CASE WHEN response_chain.id = $response_id
                THEN 0 ELSE (SELECT count(*) FROM item i WHERE i.response_id = $response_id AND NOT i.is_output) END,
            input_tokens = input_tokens + $input_tokens, output_tokens = output_tokens + $output_tokens,
            cost = cost + $cost, last_status = $status,
            last_model = coalesce($upstream_model, (SELECT r.model FROM response r WHERE r.id = $response_id))
        FROM completed
        WHERE response_chain.id = {THREAD_OF_RESPONSE}
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
# item arrays) that continues a previous response: add it to the chain's totals, and take it off the chain's
# running turns (MARK_RUNNING_TURN).
ADD_UNSEEN_TO_CHAIN = """,
    chain AS (
        UPDATE response_chain SET updated_at = greatest(response_chain.updated_at, $completed_at),
            turn_response_ids = array_remove(turn_response_ids, $response_id),
            turn_expires_at = CASE WHEN turn_response_ids <@ ARRAY[$response_id] THEN NULL ELSE turn_expires_at END,
            response_count = response_count + 1,
            item_count = item_count + cardinality($ids::text[]),
            input_tokens = input_tokens + $input_tokens, output_tokens = output_tokens + $output_tokens,
            cost = cost + $cost, last_status = $status, last_model = coalesce($upstream_model, $model)
        WHERE response_chain.id = (SELECT p.thread_id FROM response p WHERE p.id = $previous_response_id)
    )"""
