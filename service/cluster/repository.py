"""SQL for service processes: the heartbeat, and finding the turns of processes that stopped.

A process's row lists the turns it runs as of its last heartbeat. Turns it began after that heartbeat are in no
list: once a process has stopped, the reaper also looks for claims and running responses that no live process
lists and that began before the horizon, the earliest of each live process's last heartbeat less its timeout (a
live process beats four times per timeout and lists a turn from its first heartbeat after the begin, so such a
turn cannot be alive). That search reads every claimed conversation, so it runs only while a process stopped
recently.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from service.responses import repository as responses

_BEAT = text(
    """
    INSERT INTO service_process AS p
        (id, host, pid, heartbeat_at, heartbeat_timeout, running_responses, running_conversations, liveness_key,
         turn_lock_ttl, code_revision)
    VALUES (:id, :host, :pid, now(), :timeout, :responses, :conversations, :liveness_key, :turn_lock_ttl,
            :code_revision)
    ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), heartbeat_timeout = excluded.heartbeat_timeout,
        stopped_at = NULL, turn_lock_ttl = excluded.turn_lock_ttl, code_revision = excluded.code_revision,
        running_responses = excluded.running_responses, running_conversations = excluded.running_conversations
    RETURNING (SELECT stopped_at IS NOT NULL FROM service_process WHERE id = :id)
    """
)

# A live process's turns keep what they hold for as long as they run, however long that is (a turn that compacts
# first makes two upstream calls, each up to UPSTREAM_TOTAL_TIMEOUT): at each heartbeat, the deadlines of its
# conversation claims, its notes as running children (and their chains' listings) and the Idempotency-Keys its
# requests hold are moved to a TTL from now once less than half of it is left. So TURN_LOCK_TTL only ever runs
# out for a process that stopped beating. Each is reached by its key; a row another statement holds is left
# for the next heartbeat (a turn's begin or finish, which is over in milliseconds).
_RENEW_CLAIMS = text(
    """
    UPDATE conversation c SET turn_expires_at = now() + make_interval(secs => :ttl)
    FROM (SELECT id FROM conversation
          WHERE id = ANY(CAST(:conversations AS text[])) AND turn_response_id = ANY(CAST(:responses AS text[]))
            AND turn_expires_at < now() + make_interval(secs => :ttl / 2)
          ORDER BY id FOR NO KEY UPDATE SKIP LOCKED) due
    WHERE c.id = due.id
    """
)

_RENEW_RUNNING_CHILDREN = text(
    """
    WITH notes AS (
        UPDATE running_chain_turn SET expires_at = now() + make_interval(secs => :ttl)
        WHERE response_id = ANY(CAST(:responses AS text[]))
          AND expires_at < now() + make_interval(secs => :ttl / 2)
        RETURNING previous_response_id
    )
    UPDATE response_chain ch SET turn_expires_at = greatest(ch.turn_expires_at, now() + make_interval(secs => :ttl))
    FROM (SELECT chain.id FROM response_chain chain
          WHERE chain.id IN (SELECT r.thread_id FROM notes JOIN response r ON r.id = notes.previous_response_id)
            AND chain.turn_response_ids && CAST(:responses AS text[])
          ORDER BY chain.id FOR NO KEY UPDATE SKIP LOCKED) due
    WHERE ch.id = due.id
    """
)

_RENEW_KEYS = text(
    """
    UPDATE idempotency_key k SET held_until = now() + make_interval(secs => :ttl)
    FROM unnest(CAST(:key_tenants AS text[]), CAST(:keys AS text[])) AS held(tenant_id, key)
    WHERE k.tenant_id = held.tenant_id AND k.key = held.key AND k.state = 'in_progress'
      AND k.holder_process = :id AND k.held_until < now() + make_interval(secs => :ttl / 2)
    """
)

_STOP = text(
    "UPDATE service_process SET stopped_at = now(), running_responses = :responses,"
    " running_conversations = :conversations WHERE id = :id"
)

# Processes whose heartbeat is older than their timeout (each process declares its own) and whose liveness lock
# is free are taken for dead. A process holds that lock on its listening connection as long as it lives (the
# server drops the session of a killed process at once, of a lost host once TCP keepalives fail): one whose
# heartbeat is late while its lock is held is slow (its event loop stalled, its CPU starved), and its turns are
# left to finish. Trying the lock in this transaction takes it until the commit, which a listener reconnecting
# meanwhile waits out.
_FIND_DEAD = text(
    """
    UPDATE service_process SET stopped_at = now()
    WHERE id IN (SELECT id FROM service_process
                 WHERE stopped_at IS NULL AND heartbeat_at < now() - make_interval(secs => heartbeat_timeout)
                 FOR UPDATE SKIP LOCKED)
      AND (liveness_key IS NULL OR pg_try_advisory_xact_lock(liveness_key))
    RETURNING id
    """
)

# The listed turns of stopped processes that no live process lists (a live one may have taken a claim over).
_FREE_LISTED_CLAIMS = text(
    """
    WITH live AS (SELECT unnest(running_responses) AS id FROM service_process WHERE stopped_at IS NULL),
    stopped AS (SELECT unnest(running_responses) AS response_id, running_conversations
                FROM service_process WHERE stopped_at IS NOT NULL)
    UPDATE conversation c SET turn_response_id = NULL, turn_expires_at = NULL, turn_claimed_at = NULL,
        last_status = 'failed'
    FROM stopped
    WHERE c.id = ANY(stopped.running_conversations) AND c.turn_response_id = stopped.response_id
      AND c.turn_response_id NOT IN (SELECT id FROM live)
    RETURNING stopped.response_id
    """
)

_FAIL_LISTED_RESPONSES = text(
    """
    WITH live AS (SELECT unnest(running_responses) AS id FROM service_process WHERE stopped_at IS NULL),
    stopped AS (SELECT DISTINCT unnest(running_responses) AS id FROM service_process WHERE stopped_at IS NOT NULL)
    UPDATE response r SET status = 'failed', error = CAST(:error AS jsonb), completed_at = now()
    FROM stopped
    WHERE r.id = stopped.id AND r.status IN ('queued', 'in_progress') AND r.id NOT IN (SELECT id FROM live)
    RETURNING r.id, r.thread_id, r.conversation_id
    """
)

# The listed plain turns of stopped processes that no live process lists, on their chains' rows (such a turn
# stores nothing before its end): taken off, and the chain's last turn failed, as a freed claim does.
_FREE_LISTED_CHAIN_TURNS = text(
    """
    WITH live AS (SELECT unnest(running_responses) AS id FROM service_process WHERE stopped_at IS NULL),
    gone AS (SELECT coalesce(array_agg(DISTINCT id), '{}') AS ids
             FROM (SELECT unnest(running_responses) AS id FROM service_process WHERE stopped_at IS NOT NULL) s
             WHERE id NOT IN (SELECT id FROM live))
    UPDATE response_chain ch
    SET turn_response_ids = ARRAY(SELECT t FROM unnest(ch.turn_response_ids) t WHERE t <> ALL(gone.ids)),
        turn_expires_at = CASE WHEN ch.turn_response_ids <@ gone.ids THEN NULL ELSE ch.turn_expires_at END,
        last_status = 'failed'
    FROM gone, (SELECT id, turn_response_ids FROM response_chain, gone WHERE turn_response_ids && gone.ids
                FOR UPDATE OF response_chain SKIP LOCKED) listed
    WHERE ch.id = listed.id
    RETURNING ARRAY(SELECT t FROM unnest(listed.turn_response_ids) t WHERE t = ANY(gone.ids))
    """
)

# A claim's start is stored with it, so every process reads the same age whatever its own TURN_LOCK_TTL; a claim
# taken by a process older than that column has only its expiry, less this process's TTL.
_FREE_UNLISTED_CLAIMS = text(
    """
    WITH live AS (SELECT unnest(running_responses) AS id FROM service_process WHERE stopped_at IS NULL),
    horizon AS (SELECT min(heartbeat_at - make_interval(secs => heartbeat_timeout)) AS at
                FROM service_process WHERE stopped_at IS NULL),
    orphaned AS (SELECT c.id, c.turn_response_id FROM conversation c, horizon
                 WHERE c.turn_response_id IS NOT NULL
                   AND coalesce(c.turn_claimed_at, c.turn_expires_at - make_interval(secs => :ttl)) < horizon.at
                   AND c.turn_response_id NOT IN (SELECT id FROM live)
                 FOR UPDATE OF c SKIP LOCKED)
    UPDATE conversation c SET turn_response_id = NULL, turn_expires_at = NULL, turn_claimed_at = NULL,
        last_status = 'failed'
    FROM orphaned WHERE c.id = orphaned.id
    RETURNING orphaned.turn_response_id
    """
)

_FAIL_UNLISTED_RESPONSES = text(
    """
    WITH live AS (SELECT unnest(running_responses) AS id FROM service_process WHERE stopped_at IS NULL),
    horizon AS (SELECT min(heartbeat_at - make_interval(secs => heartbeat_timeout)) AS at
                FROM service_process WHERE stopped_at IS NULL)
    UPDATE response r SET status = 'failed', error = CAST(:error AS jsonb), completed_at = now()
    FROM horizon
    WHERE r.status IN ('queued', 'in_progress')
      AND (r.id = ANY(CAST(:freed AS text[])) OR (r.created_at < horizon.at AND r.id NOT IN (SELECT id FROM live)))
    RETURNING r.id, r.thread_id, r.conversation_id
    """
)

# Live frame copies of streams that ended without being cleaned up (the copying process stopped meanwhile).
_FORGET_ENDED_LIVE_FRAMES = text(
    "DELETE FROM response_live_frame f USING response r"
    " WHERE f.response_id = r.id AND r.status NOT IN ('queued', 'in_progress')"
)

_ANY_RECENTLY_STOPPED = text("SELECT EXISTS (SELECT 1 FROM service_process WHERE stopped_at IS NOT NULL)")

# The running-child notes (service/db/models.py, RunningChainTurn) of the turns stopped processes listed and no
# live one lists: dropped, so that a response a delete only hid for them goes now, not when the notes expire.
_DROP_LISTED_RUNNING_CHILDREN = text(
    """
    WITH live AS (SELECT unnest(running_responses) AS id FROM service_process WHERE stopped_at IS NULL),
    gone AS (SELECT DISTINCT id
             FROM (SELECT unnest(running_responses) AS id FROM service_process WHERE stopped_at IS NOT NULL) s
             WHERE id NOT IN (SELECT id FROM live))
    DELETE FROM running_chain_turn n USING gone WHERE n.response_id = gone.id RETURNING n.previous_response_id
    """
)

# The plain chain turns no list names (begun after their process's last heartbeat) whose notes are older than every
# live process's horizon, as for unlisted claims: taken off their chains' running turns (the chain's last turn
# failed) and their notes dropped. Left, each later turn of the chain renewed the listing, which then showed the
# chain in_progress for as long as it was used. A note holds its begin plus its holder's TTL, renewed only later:
# less the shortest TTL a live process declared, it is never earlier than the begin of a live holder's turn. A
# chain whose row another statement holds keeps its turn and note for a later pass.
_DROP_UNLISTED_CHAIN_TURNS = text(
    """
    WITH live AS (SELECT unnest(running_responses) AS id FROM service_process WHERE stopped_at IS NULL),
    horizon AS (SELECT min(heartbeat_at - make_interval(secs => heartbeat_timeout)) AS at,
                       min(coalesce(turn_lock_ttl, :ttl)) AS ttl
                FROM service_process WHERE stopped_at IS NULL),
    gone AS MATERIALIZED (
        SELECT n.response_id AS id, p.thread_id
        FROM running_chain_turn n LEFT JOIN response p ON p.id = n.previous_response_id, horizon
        WHERE n.expires_at - make_interval(secs => horizon.ttl) < horizon.at
          AND n.response_id NOT IN (SELECT id FROM live)
    ),
    listing AS MATERIALIZED (
        SELECT ch.id FROM response_chain ch WHERE ch.id IN (SELECT thread_id FROM gone)
        FOR UPDATE OF ch SKIP LOCKED
    ),
    taken_off AS (
        UPDATE response_chain ch
        SET turn_response_ids = ARRAY(SELECT t FROM unnest(ch.turn_response_ids) t
                                      WHERE t <> ALL(ARRAY(SELECT id FROM gone))),
            turn_expires_at = CASE WHEN ch.turn_response_ids <@ ARRAY(SELECT id FROM gone)
                THEN NULL ELSE ch.turn_expires_at END,
            last_status = 'failed'
        FROM listing WHERE ch.id = listing.id AND ch.turn_response_ids && ARRAY(SELECT id FROM gone)
    )
    DELETE FROM running_chain_turn n USING gone
    WHERE n.response_id = gone.id
      AND (gone.thread_id IN (SELECT id FROM listing)
           OR NOT EXISTS (SELECT FROM response_chain ch WHERE ch.id = gone.thread_id))
    RETURNING n.response_id, n.previous_response_id
    """
)

# Long enough for every turn a stopped process began after its last heartbeat to pass the horizon.
_FORGET_STOPPED = text(
    "DELETE FROM service_process"
    " WHERE stopped_at < now() - make_interval(secs => 3 * (SELECT max(heartbeat_timeout) FROM service_process))"
)


# A database-wide job's turn, for a job one pass of which covers every process's work: taken when no process
# ran the job in the last `every` seconds. Each process asks with its own interval, so one that runs the job more
# often (a shorter TURN_LOCK_TTL) is never held back by one that runs it less often. The upsert's row lock orders
# processes asking at once: the second reads the first's run and does not take the turn.
_TAKE_JOB_TURN = text(
    """
    INSERT INTO maintenance_lease AS l (name, holder, last_run_at) VALUES (:job, :holder, now())
    ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, last_run_at = excluded.last_run_at
    WHERE l.last_run_at IS NULL OR l.last_run_at <= now() - make_interval(secs => :every)
    RETURNING holder
    """
)


@dataclass(frozen=True)
class Identity:
    id: str
    host: str
    pid: int
    liveness_key: int  # the advisory lock held while the process lives (bus.py takes it)
    code_revision: str  # service.migrate.head_revision()


async def beat(
    conn: AsyncConnection,
    me: Identity,
    *,
    heartbeat_timeout: float,
    turn_lock_ttl: float,
    responses: list[str],
    conversations: list[str],
    keys: list[tuple[str, str]],
) -> bool:
    """Record a heartbeat, and renew what the running turns and held keys hold; True when this process had been
    taken for dead meanwhile (its turns were failed and what they held released: nothing is renewed then)."""
    values = {
        "id": me.id,
        "host": me.host,
        "pid": me.pid,
        "timeout": heartbeat_timeout,
        "responses": responses,
        "conversations": conversations,
        "liveness_key": me.liveness_key,
        "turn_lock_ttl": turn_lock_ttl,
        "code_revision": me.code_revision,
    }
    if await conn.scalar(_BEAT, values):
        return True
    renewal = {"id": me.id, "ttl": turn_lock_ttl, "responses": responses}
    if conversations:
        await conn.execute(_RENEW_CLAIMS, {**renewal, "conversations": conversations})
    if responses:
        await conn.execute(_RENEW_RUNNING_CHILDREN, renewal)
    if keys:
        tenants, names = [tenant for tenant, _ in keys], [name for _, name in keys]
        await conn.execute(_RENEW_KEYS, {**renewal, "key_tenants": tenants, "keys": names})
    return False


# A live process of a release before service_process.code_revision (and so before e6a3c9d1f402's packed answers):
# its row has none. Alive as the reaper judges it (_FIND_DEAD): until it is marked stopped, since one whose
# heartbeat is late while it holds its liveness lock still serves. A later change of a stored form would compare
# the revisions that read it.
_OLDER_RELEASE_ALIVE = text(
    "SELECT EXISTS (SELECT 1 FROM service_process WHERE code_revision IS NULL AND stopped_at IS NULL)"
)


async def older_release_alive(conn: AsyncConnection) -> bool:
    """Whether a process of a release that reads only the stored forms before packed answers still serves: during
    a rolling upgrade the newer processes write what it can read."""
    return bool(await conn.scalar(_OLDER_RELEASE_ALIVE))


async def stop(conn: AsyncConnection, me: Identity, responses: list[str], conversations: list[str]) -> None:
    await conn.execute(_STOP, {"id": me.id, "responses": responses, "conversations": conversations})


async def mark_dead(conn: AsyncConnection) -> list[str]:
    return [row[0] for row in await conn.execute(_FIND_DEAD)]


async def any_stopped(conn: AsyncConnection) -> bool:
    return bool(await conn.scalar(_ANY_RECENTLY_STOPPED))


async def fail_orphaned_turns(conn: AsyncConnection, *, ttl: float, error: str) -> list[str]:
    """Free the claims and fail the responses of turns whose process stopped, and the last status of their
    chains; returns the failed responses (and the claims and chain listings freed: a plain turn stores no
    response before it ends)."""
    freed = [row[0] for row in await conn.execute(_FREE_LISTED_CLAIMS)]
    failed = list((await conn.execute(_FAIL_LISTED_RESPONSES, {"error": error})).all())
    freed += [row[0] for row in await conn.execute(_FREE_UNLISTED_CLAIMS, {"ttl": ttl})]
    failed += (await conn.execute(_FAIL_UNLISTED_RESPONSES, {"error": error, "freed": freed})).all()
    await responses.count_failed_turns(conn, failed)
    unseen = [turn for row in await conn.execute(_FREE_LISTED_CHAIN_TURNS) for turn in row[0]]
    parents = list((await conn.execute(_DROP_LISTED_RUNNING_CHILDREN)).scalars().all())
    for turn, parent in (await conn.execute(_DROP_UNLISTED_CHAIN_TURNS, {"ttl": ttl})).all():
        unseen.append(turn)
        parents.append(parent)
    await responses.delete_hidden_if_unneeded(conn, parents)
    await conn.execute(_FORGET_STOPPED)
    return sorted({row.id for row in failed} | set(freed) | set(unseen))


async def take_job_turn(conn: AsyncConnection, *, job: str, holder: str, every: float) -> bool:
    """Whether this process runs `job` now (no process ran it in the last `every` seconds); if so, it is recorded
    as run now by `holder`."""
    return (await conn.scalar(_TAKE_JOB_TURN, {"job": job, "holder": holder, "every": every})) is not None


async def forget_ended_live_frames(conn: AsyncConnection) -> None:
    """In a transaction of its own: locking response_live_frame after service_process would deadlock with a
    TRUNCATE (or any writer) that takes them in the other order."""
    await conn.execute(_FORGET_ENDED_LIVE_FRAMES)
