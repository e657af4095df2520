#!/usr/bin/env python3
"""The analysts' cookbook (docs/analysts.md) timed on a large PostgreSQL database.

Run through bench/analysts, which builds the release binary and provides a PostgreSQL server
(SESSION_SYNC_TEST_POSTGRES_URL). It creates a database, migrates it with session-sync itself
(so the indexes and views are the migrations' own), fills it with generate_series SQL (a query
benchmark: filling it through real syncs would take hours), then runs every PostgreSQL query
of the cookbook, read from the doc as the tests read it, and prints the best of 3 beside a
baseline measured in the same run: a full count of sessions, the cost of reading the table.

`bench/analysts.py --sqlite` times the SQLite queries on a SQLite file instead
(BENCH_SQLITE_SESSIONS, default 1,000,000); `--index-cost` measures what an index on
session_created_at costs a first sync's bulk insert, on both backends.

The data (seeded, so every run is the same): BENCH_ACCOUNTS accounts (customer_id 1..N, so
the cookbook's customer 42 exists) with BENCH_SESSIONS sessions in all, created evenly over
BENCH_DAYS days up to 2025-03-08T00:00Z (the end of the cookbook's period; "now"). Numbers
recur (a skewed pool of 30,000 per account). 70% of sessions stay listed for their whole
24-hour window, the rest end at a uniformly random point of it; first_seen_at and closed_at
fall on the 5-minute polls, and the table is in the order syncs would have written it.
sync_runs has a run every 5 minutes per account (0.5% failed,
0.05% abandoned, 2% with a few rejected records, stored in rejected_rows).
"""

import os
import re
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlparse, urlunparse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/session-sync")
DOC = os.path.join(ROOT, "docs/analysts.md")
PG_ADMIN = os.environ.get("SESSION_SYNC_TEST_POSTGRES_URL")

ACCOUNTS = int(os.environ.get("BENCH_ACCOUNTS", "100"))
SESSIONS = int(os.environ.get("BENCH_SESSIONS", "10000000"))
DAYS = int(os.environ.get("BENCH_DAYS", "60"))
# Keep the filled database between runs (re-used when it exists): BENCH_KEEP=1.
KEEP = os.environ.get("BENCH_KEEP") == "1"
DB_NAME = "bench_analysts"
SLOW_SECS = 0.5

FILL = """
SET work_mem = '256MB';
SET maintenance_work_mem = '1GB';
SELECT setseed(0.42);
INSERT INTO accounts (customer_id, name)
SELECT g, 'account-' || g FROM generate_series(1, {accounts}) g
ON CONFLICT (customer_id) WHERE sub_account_id IS NULL DO NOTHING;

-- Sessions, each where real syncs leave its last version: a poll inserts the sessions it
-- sees first and rewrites those it closes, so the table is in the order of closed_at, or of
-- first_seen_at for those still open.
INSERT INTO sessions (account_id, source, session_created_at, expires_at, first_seen_at, closed_at)
SELECT account_id, source, created, created + interval '24 hours',
       date_bin('5 minutes', created, t0) + interval '5 minutes',
       CASE WHEN closed < t1 THEN closed END
FROM (
    SELECT account_id, source, created, t0, t1,
           date_bin('5 minutes', created + lifetime, t0) + interval '5 minutes' AS closed
    FROM (
        SELECT a.id AS account_id,
               '55119' || lpad(floor(30000 * power(random(), 1.5))::int::text, 8, '0') AS source,
               date_trunc('milliseconds',
                          p.t0 + (k - 1) * ((p.t1 - p.t0) / {per_account})
                          + random() * interval '30 seconds') AS created,
               CASE WHEN random() < 0.7 THEN interval '24 hours'
                    ELSE random() * interval '24 hours' END AS lifetime,
               p.t0, p.t1
        FROM (SELECT timestamptz '2025-03-08 00:00:00Z' - interval '{days} days' AS t0,
                     timestamptz '2025-03-08 00:00:00Z' AS t1) p,
             accounts a, generate_series(1, {per_account}) k
    ) x
) y
ORDER BY CASE WHEN closed < t1 THEN closed ELSE created END;

-- A poll every 5 minutes per account.
INSERT INTO sync_runs (account_id, started_at, finished_at, status, rows_read, rows_rejected,
                       sessions_new, sessions_closed, error)
SELECT account_id, t, t + interval '2 seconds', status,
       CASE WHEN status = 'succeeded' THEN 1300 + floor(random() * 300)::int ELSE 0 END,
       CASE WHEN status = 'succeeded' AND random() < 0.02 THEN 1 + floor(random() * 4)::int
            ELSE 0 END,
       CASE WHEN status = 'succeeded' THEN floor(random() * 12)::int ELSE 0 END,
       CASE WHEN status = 'succeeded' THEN floor(random() * 12)::int ELSE 0 END,
       CASE status WHEN 'failed' THEN 'api: HTTP 503 Service Unavailable after 4 attempts'
                   WHEN 'abandoned' THEN 'abandoned: the process stopped during the run' END
FROM (
    SELECT account_id, t,
           CASE WHEN u < 0.005 THEN 'failed' WHEN u < 0.0055 THEN 'abandoned'
                ELSE 'succeeded' END AS status
    FROM (
        SELECT a.id AS account_id, t, random() AS u
        FROM accounts a,
             generate_series(timestamptz '2025-03-08 00:00:00Z' - interval '{days} days',
                             timestamptz '2025-03-08 00:00:00Z' - interval '5 minutes',
                             interval '5 minutes') t
    ) x
) runs
ORDER BY t, account_id;

INSERT INTO rejected_rows (run_id, line_number, raw_record, reason)
SELECT r.id, 2 + floor(random() * 1500)::int,
       (ARRAY['55abc,2025-03-01T10:00:00Z', '123,2025-03-01T10:00:00Z',
              '5511900000001,yesterday'])[1 + i % 3],
       (ARRAY['number holds a character other than digits, ''+'', '' '' or ''-''',
              'number has fewer than 8 digits',
              'session_created_at: not a timestamp'])[1 + i % 3]
FROM sync_runs r, generate_series(1, r.rows_rejected) i
WHERE r.rows_rejected > 0;
"""


SQLITE_FILL = """
PRAGMA journal_mode = WAL;
PRAGMA synchronous = OFF;
BEGIN;
WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < {accounts})
INSERT INTO accounts (customer_id, name) SELECT i, 'account-' || i FROM g
WHERE NOT EXISTS (SELECT 1 FROM accounts WHERE customer_id = i AND sub_account_id IS NULL);

CREATE TEMP TABLE params AS
SELECT julianday('2025-03-08T00:00:00.000Z') - {days} AS t0, julianday('2025-03-08T00:00:00.000Z') AS t1;

-- The same shape as PostgreSQL's, in julian days: created evenly with 30 s of jitter, 70%
-- listed for the whole window, first seen within 5 minutes, closed after the next poll.
WITH RECURSIVE k(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM k WHERE n < {per_account}),
raw AS (
    SELECT a.id AS account_id,
           '55119' || printf('%08d', CAST(30000 * pow((abs(random()) % 1000000) / 1e6, 1.5) AS INTEGER)) AS source,
           p.t0 + (n - 1) * ((p.t1 - p.t0) / {per_account}) + (abs(random()) % 30000) / 86400000.0 AS created,
           CASE WHEN abs(random()) % 10 < 7 THEN 1.0 ELSE (abs(random()) % 86400000) / 86400000.0 END AS lifetime,
           p.t1
    FROM accounts a, k, params p
)
INSERT OR IGNORE INTO sessions (account_id, source, session_created_at, expires_at, first_seen_at, closed_at)
SELECT account_id, source,
       strftime('%Y-%m-%dT%H:%M:%fZ', created), strftime('%Y-%m-%dT%H:%M:%fZ', created + 1),
       strftime('%Y-%m-%dT%H:%M:%fZ', created + 150 / 86400.0),
       CASE WHEN created + lifetime + 150 / 86400.0 < t1
            THEN strftime('%Y-%m-%dT%H:%M:%fZ', created + lifetime + 150 / 86400.0) END
FROM raw;

WITH RECURSIVE t(at) AS (
    SELECT (SELECT t0 FROM params) UNION ALL
    SELECT at + 300 / 86400.0 FROM t WHERE at + 300 / 86400.0 < (SELECT t1 FROM params) - 1e-9),
runs AS (SELECT a.id AS account_id, t.at, abs(random()) % 10000 AS u FROM accounts a, t)
INSERT INTO sync_runs (account_id, started_at, finished_at, status, rows_read, rows_rejected, error)
SELECT account_id, strftime('%Y-%m-%dT%H:%M:%fZ', at), strftime('%Y-%m-%dT%H:%M:%fZ', at + 2 / 86400.0),
       CASE WHEN u < 50 THEN 'failed' WHEN u < 55 THEN 'abandoned' ELSE 'succeeded' END,
       CASE WHEN u >= 55 THEN 1300 + u % 300 ELSE 0 END,
       CASE WHEN u >= 55 AND u % 50 = 0 THEN 1 + u % 4 ELSE 0 END,
       CASE WHEN u < 50 THEN 'api: HTTP 503 Service Unavailable after 4 attempts'
            WHEN u < 55 THEN 'abandoned: the process stopped during the run' END
FROM runs ORDER BY at, account_id;

WITH RECURSIVE i(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM i WHERE n < 4)
INSERT INTO rejected_rows (run_id, line_number, raw_record, reason)
SELECT r.id, 2 + n, '55abc,2025-03-01T10:00:00Z', 'number has fewer than 8 digits'
FROM sync_runs r JOIN i ON i.n <= r.rows_rejected;
COMMIT;
ANALYZE;
"""


def sqlite_bench():
    """The SQLite recipes on BENCH_SQLITE_SESSIONS sessions (default 1,000,000)."""
    sessions = int(os.environ.get("BENCH_SQLITE_SESSIONS", "1000000"))
    work = tempfile.mkdtemp(prefix="session-sync-analysts.")
    db = os.path.join(work, "history.db")
    migrate(f"sqlite://{db}")
    print(f"SQLite: filling {ACCOUNTS} accounts x {sessions // ACCOUNTS} sessions over {DAYS} days ...", flush=True)
    subprocess.run(["sqlite3", db], input=SQLITE_FILL.format(accounts=ACCOUNTS, per_account=sessions // ACCOUNTS, days=DAYS),
                   text=True, check=True, capture_output=True)

    def best(sql):
        out = subprocess.run(["sqlite3", db], input=".timer on\n.output /dev/null\n" + (sql + "\n") * 3,
                             text=True, check=True, capture_output=True).stdout
        return min(float(t) for t in re.findall(r"^Run Time: real ([0-9.]+)", out, re.M))

    count = subprocess.run(["sqlite3", db, "SELECT count(*) FROM sessions"], text=True, check=True,
                           capture_output=True).stdout.strip()
    baseline_sql = "SELECT count(*) FROM sessions;"
    baseline = best(baseline_sql)
    rows = [("baseline: " + baseline_sql, baseline)]
    with open(DOC) as f:
        for heading, sql in recipes(f.read(), "SQLite"):
            rows.append((heading, best(sql)))
    print(f"\nSQLite, {count} sessions, {os.path.getsize(db) / 2**20:.0f} MiB")
    print(f"{'query (best of 3)':<92} {'s':>7} {'/ baseline':>10}")
    for name, secs in rows:
        print(f"{name[:92]:<92} {secs:>7.3f} {secs / max(baseline, 1e-6):>10.2f}")
    subprocess.run(["rm", "-rf", work], check=True)


def migrate(db_url):
    """Applies session-sync's own migrations (and registers the accounts 1..ACCOUNTS)."""
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as cfg:
        cfg.write(f'database_url = "{db_url}"\n[api]\nusername = "bench"\ntoken = "bench"\n')
        for c in range(1, ACCOUNTS + 1):
            cfg.write(f'[[accounts]]\ncustomer_id = {c}\nname = "account-{c}"\n')
        cfg.flush()
        subprocess.run([BIN, "migrate", "--config", cfg.name], check=True,
                       env={**os.environ, "RUST_LOG": "warn"})


def migrate_before(db_url, version):
    """Applies the PostgreSQL migrations older than `version` the way session-sync records
    them (sqlx's _sqlx_migrations, checksum SHA-384 of the file), so that `migrate` applies
    the rest on the filled database and can be timed."""
    import hashlib
    folder = os.path.join(ROOT, "migrations/postgres")
    psql(db_url, """CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY,
        description TEXT NOT NULL, installed_on TIMESTAMPTZ NOT NULL DEFAULT now(),
        success BOOLEAN NOT NULL, checksum BYTEA NOT NULL, execution_time BIGINT NOT NULL)""")
    for name in sorted(os.listdir(folder)):
        number = int(name.split("_")[0])
        if number >= version:
            continue
        path = os.path.join(folder, name)
        psql(db_url, None, stdin=open(path).read())
        with open(path, "rb") as f:
            checksum = hashlib.sha384(f.read()).hexdigest()
        description = name.split("_", 1)[1].rsplit(".", 1)[0].replace("_", " ")
        psql(db_url, f"INSERT INTO _sqlx_migrations VALUES ({number}, '{description}', now(), "
                     f"true, '\\x{checksum}', 0)")


def pg_url(name):
    u = urlparse(PG_ADMIN)
    return urlunparse(u._replace(path="/" + name))


def psql(url, sql, *extra, stdin=None):
    args = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", url, *extra]
    if stdin is None:
        args += ["-c", sql]
    return subprocess.run(args, input=stdin, check=True, capture_output=True, text=True).stdout


def recipes(markdown, backend):
    """(heading, statement) for every recipe of the doc, as tests/it/analysts.rs reads them:
    each ```sql block belongs to the ### heading above it; a `-- SQLite` / `-- PostgreSQL`
    line marks the statements after it as one dialect's, else they are for both."""
    out, heading, block, dialect, current = [], None, None, None, []
    for line in markdown.splitlines():
        if block is None:
            if line.startswith("### "):
                heading = line[4:].strip()
            elif line.strip() == "```sql":
                block, dialect, current = [], None, []
            continue
        if line.strip() == "```":
            block = None
            continue
        if line.strip() in ("-- SQLite", "-- PostgreSQL"):
            dialect = line.strip()[3:]
            continue
        current.append(line)
        if line.rstrip().endswith(";"):
            if dialect in (None, backend):
                out.append((heading, "\n".join(current).strip()))
            current = []
    return out


# The end of the generated history: the cookbook's "now".
NOW = "2025-03-08 00:00:00Z"


# The first migration of the renewals (closed_reason and its back-fill).
RENEWALS_MIGRATION = 4
# Recipes that chain sessions into conversations or look up a later poll per session, over the
# last 7 days: held to 5 s rather than the 1 s of the others (see docs/analysts.md, How fast).
CHAINING = {
    "How many conversations started each day, in a local time zone?",
    "How long do conversations last, per account?",
    "How many times are conversations renewed, per account?",
    "Does the vendor renew session_created_at? Per account, over the last 7 days",
}


def best_of_3(url, sql):
    """Seconds, best of 3 runs in one session (\\timing: server time plus transfer)."""
    script = "\\timing on\n\\o /dev/null\n" + (sql + "\n") * 3
    out = psql(url, None, stdin=script)
    times = [float(t) / 1000 for t in re.findall(r"^Time: ([0-9.]+) ms", out, re.M)]
    if len(times) != 3:
        sys.exit(f"expected 3 timings, got: {out}")
    return min(times)


def index_cost():
    """What an index on session_created_at costs a first sync: bench/bench.py's bulk-load
    baseline (COPY or .import of a million-row snapshot, then INSERT ... ORDER BY key) into
    its sessions table, with and without each candidate index, median of 3, interleaved."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench
    vendor = os.path.join(ROOT, "target/release/examples/bench-vendor")
    if not os.path.exists(vendor):
        sys.exit(f"{vendor} is missing: cargo build --release --example bench-vendor")
    rows = int(os.environ.get("BENCH_ROWS", "1000000"))
    work = tempfile.mkdtemp(prefix="session-sync-analysts.")
    csv = os.path.join(work, "snapshot.csv")
    subprocess.run([vendor, "generate", "--rows", str(rows), "--seed", "1", "--out", csv], check=True)
    pg = {"PostgreSQL, no extra index": "",
          "PostgreSQL, BRIN (session_created_at)":
              "CREATE INDEX sessions_by_created ON sessions USING brin (session_created_at) "
              "WITH (autosummarize = on);",
          "PostgreSQL, B-tree (session_created_at, account_id)":
              "CREATE INDEX sessions_by_created ON sessions (session_created_at, account_id);"}
    lite = {"SQLite, no extra index": "",
            "SQLite, B-tree (session_created_at)":
                "CREATE INDEX sessions_by_created ON sessions (session_created_at);"}
    times = {name: [] for name in [*pg, *lite] if PG_ADMIN or name in lite}
    for _ in range(3):
        for name, ddl in lite.items():
            db = os.path.join(work, "limit.db")
            for f in (db, db + "-wal", db + "-shm"):
                if os.path.exists(f):
                    os.remove(f)
            subprocess.run(["sqlite3", db, "PRAGMA journal_mode=WAL;" + bench.SQLITE_SCHEMA + ddl],
                           check=True, capture_output=True)
            times[name].append(bench.measured(["sqlite3", db], stdin=bench.open_text(
                bench.SQLITE_LOAD.format(csv=csv, close="")))[0])
        if PG_ADMIN:
            bench.PG_ADMIN = PG_ADMIN
            for name, ddl in pg.items():
                url = bench.fresh_pg("bench_index_cost")
                psql(url, bench.PG_SCHEMA + ddl)
                times[name].append(bench.measured(
                    ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", url],
                    stdin=bench.open_text(bench.PG_LOAD.format(csv=csv, close="")))[0])
            psql(PG_ADMIN, "DROP DATABASE bench_index_cost")
    subprocess.run(["rm", "-rf", work], check=True)
    print(f"\nfirst load of {rows} rows (median of 3)")
    for name, ts in times.items():
        print(f"{name:<56} {bench.median(ts):>7.2f} s   {' '.join(f'{t:.2f}' for t in ts)}")


def main():
    if sys.argv[1:] == ["--sqlite"]:
        return sqlite_bench()
    if sys.argv[1:] == ["--index-cost"]:
        return index_cost()
    if not PG_ADMIN:
        sys.exit("SESSION_SYNC_TEST_POSTGRES_URL is not set (bench/analysts sets it)")
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} is missing: run bench/analysts, which builds it")
    url = pg_url(DB_NAME)
    exists = psql(PG_ADMIN, f"SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}'", "-At").strip()
    if not (KEEP and exists):
        psql(PG_ADMIN, f"DROP DATABASE IF EXISTS {DB_NAME}")
        psql(PG_ADMIN, f"CREATE DATABASE {DB_NAME}")
        # Filled as a database of the version before the renewals, then upgraded: the
        # upgrade's back-fill is timed on this history.
        migrate_before(url, RENEWALS_MIGRATION)
        per_account = SESSIONS // ACCOUNTS
        print(f"filling {ACCOUNTS} accounts x {per_account} sessions over {DAYS} days ...",
              flush=True)
        psql(url, None, stdin=FILL.format(accounts=ACCOUNTS, per_account=per_account, days=DAYS))
        psql(url, "VACUUM ANALYZE")
        started = time.perf_counter()
        migrate(url)
        upgrade = time.perf_counter() - started
        psql(url, "VACUUM ANALYZE sessions")
        renewed = psql(url, "SELECT count(*) FILTER (WHERE closed_reason = 'renewed'), "
                            "count(*) FILTER (WHERE closed_reason = 'ended') FROM sessions",
                       "-At", "-F", " ").split()
        print(f"upgrade to the current migrations: {upgrade:.1f} s; "
              f"{renewed[0]} sessions classified renewed, {renewed[1]} ended", flush=True)
    else:
        print(f"re-using database {DB_NAME} (BENCH_KEEP=1)")
    facts = psql(url, """
        SELECT (SELECT count(*) FROM sessions), (SELECT count(*) FROM sessions WHERE closed_at IS NULL),
               (SELECT count(*) FROM sync_runs), (SELECT count(*) FROM rejected_rows),
               pg_size_pretty(pg_total_relation_size('sessions'))""", "-At", "-F", " ").split()
    print(f"sessions {facts[0]} ({facts[4]} {facts[5]} with indexes), open now {facts[1]}, "
          f"sync_runs {facts[2]}, rejected_rows {facts[3]}")

    baseline_sql = "SELECT count(*) FROM sessions;"
    baseline = best_of_3(url, baseline_sql)
    rows = [("baseline: " + baseline_sql, baseline)]
    if not (KEEP and exists):
        rows.append(("upgrade from before the renewals (migrations 0004, 0005)", upgrade))
    slow = []
    with open(DOC) as f:
        for heading, sql in recipes(f.read(), "PostgreSQL"):
            # The history ends at the cookbook's "now"; recipes that ask about the real now
            # are asked about that one instead.
            sql = sql.replace("now()", f"timestamptz '{NOW}'")
            secs = best_of_3(url, sql)
            rows.append((heading, secs))
            if secs > SLOW_SECS:
                slow.append((heading, sql))
    print()
    print(f"{'query (best of 3)':<92} {'s':>7} {'/ baseline':>10}")
    for name, secs in rows:
        print(f"{name[:92]:<92} {secs:>7.3f} {secs / max(baseline, 1e-6):>10.2f}")
    for heading, sql in slow:
        print(f"\nslower than {SLOW_SECS} s: {heading}")
        print(psql(url, "EXPLAIN (ANALYZE, BUFFERS) " + sql))
    if not KEEP:
        psql(PG_ADMIN, f"DROP DATABASE {DB_NAME}")
    if any(secs > (5.0 if name in CHAINING else 1.0) for name, secs in rows[1:]
           if not name.startswith("upgrade")):
        sys.exit("a cookbook query took longer than its bound (1 s; 5 s for those that chain)")


if __name__ == "__main__":
    main()
