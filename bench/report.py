#!/usr/bin/env python3
"""`session-sync report` on a large PostgreSQL database (run through bench/report).

Fills (or, with BENCH_KEEP=1, re-uses) bench/analysts' database: 10 million sessions, 100
accounts, 60 days up to 2025-03-08, a poll every 5 minutes per account. Those polls are
written by SQL, not by syncs, so their `sessions_open` (what a real successful run records
since migration 0005) is filled with the records they listed, `rows_read - rows_rejected`.

Then it runs the real binary, `session-sync report --out FILE`, for several periods, each
best of 3, and prints its wall time and peak RSS beside baselines measured in the same run:
- time: a full count of sessions (`SELECT count(*) FROM sessions` through psql, wall time),
  the cost of reading the table once;
- memory: `session-sync status` on the same database (connects, reads one row per account),
  the smallest session-sync process that reads it.
"""

import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import analysts  # noqa: E402  (the fill, the migration, psql)

PERIODS = [
    ("a week, every account (the default length)", ["--until", "2025-03-08"]),
    ("a week, one account", ["--until", "2025-03-08", "--customer", "42"]),
    ("30 days, every account", ["--since", "2025-02-06", "--until", "2025-03-08"]),
    ("60 days (all of it), every account", ["--since", "2025-01-07", "--until", "2025-03-08"]),
    ("a week, every account, in America/Sao_Paulo", ["--until", "2025-03-08", "--tz", "America/Sao_Paulo"]),
]


def measured(args):
    """(wall seconds, peak RSS in MiB) of one run of a command."""
    started = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    err = proc.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) not in (0,):
        sys.exit(f"{args} failed: {err}")
    return wall, usage.ru_maxrss / 1024


def best_of_3(args):
    runs = [measured(args) for _ in range(3)]
    return min(r[0] for r in runs), max(r[1] for r in runs)


def main():
    if not analysts.PG_ADMIN:
        sys.exit("SESSION_SYNC_TEST_POSTGRES_URL is not set (bench/report sets it)")
    url = analysts.pg_url(analysts.DB_NAME)
    exists = analysts.psql(analysts.PG_ADMIN,
                           f"SELECT 1 FROM pg_database WHERE datname = '{analysts.DB_NAME}'", "-At").strip()
    if not (analysts.KEEP and exists):
        analysts.psql(analysts.PG_ADMIN, f"DROP DATABASE IF EXISTS {analysts.DB_NAME}")
        analysts.psql(analysts.PG_ADMIN, f"CREATE DATABASE {analysts.DB_NAME}")
        analysts.migrate(url)
        per_account = analysts.SESSIONS // analysts.ACCOUNTS
        print(f"filling {analysts.ACCOUNTS} accounts x {per_account} sessions over {analysts.DAYS} days ...",
              flush=True)
        analysts.psql(url, None, stdin=analysts.FILL.format(
            accounts=analysts.ACCOUNTS, per_account=per_account, days=analysts.DAYS))
    else:
        analysts.migrate(url)  # brings a kept database up to this binary's migrations
        print(f"re-using database {analysts.DB_NAME} (BENCH_KEEP=1)")
    analysts.psql(url, "UPDATE sync_runs SET sessions_open = rows_read - rows_rejected "
                       "WHERE status = 'succeeded' AND sessions_open IS NULL")
    analysts.psql(url, "VACUUM ANALYZE")
    facts = analysts.psql(url, "SELECT (SELECT count(*) FROM sessions), (SELECT count(*) FROM sync_runs)",
                          "-At", "-F", " ").split()
    print(f"sessions {facts[0]}, sync_runs {facts[1]}")

    work = tempfile.mkdtemp(prefix="session-sync-report.")
    config = os.path.join(work, "session-sync.toml")
    with open(config, "w") as f:
        f.write(f'database_url = "{url}"\n')
        for c in range(1, analysts.ACCOUNTS + 1):
            f.write(f'[[accounts]]\ncustomer_id = {c}\nname = "account-{c}"\n')
    out = os.path.join(work, "report.html")
    env_args = [analysts.BIN]

    count_wall = min(measured(["psql", "-X", "-q", "-At", url, "-c", "SELECT count(*) FROM sessions"])[0]
                     for _ in range(3))
    _, status_rss = best_of_3(env_args + ["status", "--config", config])
    print(f"\nbaseline time: full count of sessions through psql, {count_wall:.3f} s (best of 3)")
    print(f"baseline memory: session-sync status, peak RSS {status_rss:.1f} MiB\n")
    print(f"{'report (best of 3)':<50} {'s':>7} {'/ count':>8} {'MiB':>7} {'/ status':>9} {'KiB html':>9}")
    slow = False
    for name, args in PERIODS:
        wall, rss = best_of_3(env_args + ["report", "--config", config, "--out", out] + args)
        size = os.path.getsize(out) / 1024
        print(f"{name:<50} {wall:>7.3f} {wall / count_wall:>8.2f} {rss:>7.1f} {rss / status_rss:>9.2f} {size:>9.0f}")
        # The bound: the default page (a week) of every account in under 5 s.
        slow = slow or (wall > 5.0 and name.startswith("a week"))
    subprocess.run(["rm", "-rf", work], check=True)
    if not analysts.KEEP:
        analysts.psql(analysts.PG_ADMIN, f"DROP DATABASE {analysts.DB_NAME}")
    if slow:
        sys.exit("a report of a week took more than 5 s")


if __name__ == "__main__":
    main()
