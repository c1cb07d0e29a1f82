"""Once the service has started, what start-up made (modules, routes, compiled schemas, settings: most of the
process's objects, and nearly all of them live for good) is moved out of the cyclic garbage collector's reach.

Every full collection scanned all of them with the event loop stopped, and the pause landed on whichever
requests were in flight; a tenant flooding the service makes full collections more frequent, so the pauses
were what another tenant's tail latency paid for it (docs/benchmarks.md, hostile load). Cycles among the
frozen objects are never collected: start-up makes none that matter.

Then the collector runs less often: a turn allocates thousands of container objects (decoded JSON, rows,
frames), nearly all freed by their reference counts, and Python's default starts a young collection every 700
net allocations, each walking all of them. Fewer, larger collections cost less CPU in all (docs/benchmarks.md);
what they hold meanwhile is only the garbage in cycles, which turns make little of."""

from __future__ import annotations

import gc

_frozen = False
THRESHOLDS = (20_000, 50, 100)


def freeze_startup_objects() -> None:
    """Once per process (tests start many applications in one)."""
    global _frozen  # noqa: PLW0603 - one flag per process, by design
    if _frozen:
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    _frozen = True
