"""`python -m bench`: run the suite and print one table (see docs/benchmarks.md).

Environment (or the matching options): BENCH_DATABASE_URL (wiped!), BENCH_1M_DATABASE_URL, BENCH_10M=1 /
BENCH_10M_DATABASE_URL, BENCH_ADMIN_DATABASE_URL, QUICK=1, SOAK_SECONDS, BENCH_WORKERS (e.g. "1,2"),
BENCH_SKIP (e.g. "soak,tables").
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import uvloop

from bench import report
from bench.suite import Config, run

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432"


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def main(argv: list[str] | None = None) -> int:
    env = os.environ
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--database-url", default=env.get("BENCH_DATABASE_URL", f"{DEFAULT_SERVER}/convstore_bench"))
    parser.add_argument(
        "--big-database-url", default=env.get("BENCH_1M_DATABASE_URL", f"{DEFAULT_SERVER}/convstore_bench_1m")
    )
    parser.add_argument("--with-10m", action="store_true", default=_flag("BENCH_10M"))
    parser.add_argument(
        "--huge-database-url", default=env.get("BENCH_10M_DATABASE_URL", f"{DEFAULT_SERVER}/convstore_bench_10m")
    )
    parser.add_argument("--admin-database-url", default=env.get("BENCH_ADMIN_DATABASE_URL") or None)
    parser.add_argument("--quick", action="store_true", default=_flag("QUICK"))
    parser.add_argument("--soak-seconds", type=float, default=float(env.get("SOAK_SECONDS") or 0) or None)
    parser.add_argument("--workers", default=env.get("BENCH_WORKERS", "1,2"), help="worker counts for throughput")
    parser.add_argument(
        "--skip",
        default=env.get("BENCH_SKIP", ""),
        help="scaling,capacity,resume,observability,throughput,tables,soak,chains,admin",
    )
    parser.add_argument("--results", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    config = Config(
        database_url=args.database_url,
        big_database_url=args.big_database_url or None,
        huge_database_url=args.huge_database_url if args.with_10m else None,
        admin_database_url=args.admin_database_url,
        quick=args.quick,
        soak_seconds=args.soak_seconds,
        throughput_workers=[int(w) for w in args.workers.split(",") if w.strip()],
        results_dir=args.results,
        skip=frozenset(s.strip() for s in args.skip.split(",") if s.strip()),
    )
    started = time.perf_counter()
    rows, extra = uvloop.run(run(config))
    elapsed = time.perf_counter() - started
    print()
    print(report.render(rows))
    saved = report.save(rows, args.results, {**extra, "seconds": round(elapsed)})
    print(f"\nsuite took {elapsed / 60:.1f} min; results in {saved}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
