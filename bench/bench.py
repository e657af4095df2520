#!/usr/bin/env python3
"""session-sync against the databases' own bulk-load speed, in one run.

Run through bench/run, which builds the release binaries and provides a PostgreSQL server
(SESSION_SYNC_TEST_POSTGRES_URL). Every figure is measured here, in this run, next to its
baseline, so ratios stay meaningful on a shared, noisy machine.

Baselines (the "limits"): the sqlite3 shell's .import, and psql's \\copy, of the same CSV into
a staging table, then set-based statements into a sessions table shaped like session-sync's
(same key, same open-sessions index): INSERT ... SELECT ... ORDER BY key ON CONFLICT DO NOTHING
for a first load; for a repeated poll also the anti-join UPDATE that closes what is gone. To
keep the limit strict it does less than session-sync: no expiry arithmetic (expires_at is a
copy of session_created_at), no run bookkeeping, no rejected-row checks.
"""

import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from urllib.parse import urlparse, urlunparse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/session-sync")
VENDOR = os.path.join(ROOT, "target/release/examples/bench-vendor")
PG_ADMIN = os.environ.get("SESSION_SYNC_TEST_POSTGRES_URL")
PG_BOUNCER = os.environ.get("SESSION_SYNC_TEST_PGBOUNCER_URL")

ROWS_LARGE = int(os.environ.get("BENCH_ROWS", "1000000"))
ROWS_HUGE = int(os.environ.get("BENCH_ROWS_HUGE", str(5 * ROWS_LARGE)))
MANY_ACCOUNTS = int(os.environ.get("BENCH_ACCOUNTS", "1000"))
ROWS_EACH = ROWS_LARGE // MANY_ACCOUNTS
REPEATS = int(os.environ.get("BENCH_REPEATS", "10"))
# The scale case: several instances on one PostgreSQL through PgBouncer, one cron tick.
SCALE_ACCOUNTS = int(os.environ.get("BENCH_SCALE_ACCOUNTS", "10000"))
SCALE_ROWS = int(os.environ.get("BENCH_SCALE_ROWS", "100"))
SCALE_INSTANCES = int(os.environ.get("BENCH_SCALE_INSTANCES", "3"))
FIRST_SCALE = 100001
# Which parts to run: sqlite, pg, scale (default all), and compare (with BENCH_OTHER_BIN:
# this build against another binary, say a previous commit's, in the same run; bench/compare).
PARTS = set(os.environ.get("BENCH_PARTS", "sqlite,pg,scale").split(","))
OTHER_BIN = os.environ.get("BENCH_OTHER_BIN")

CUSTOMER_LARGE, CUSTOMER_HUGE, FIRST_MANY = 1, 2, 1001

SQLITE_SCHEMA = """
CREATE TABLE sessions (
    account_id INTEGER NOT NULL, source TEXT NOT NULL, session_created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL, first_seen_at TEXT NOT NULL, closed_at TEXT,
    PRIMARY KEY (account_id, source, session_created_at)) WITHOUT ROWID;
CREATE INDEX sessions_open ON sessions (account_id, source, session_created_at)
    WHERE closed_at IS NULL;
"""
SQLITE_LOAD = """
DROP TABLE IF EXISTS staging;
CREATE TABLE staging (source TEXT, created_at TEXT);
.import --csv --skip 1 {csv} staging
BEGIN IMMEDIATE;
{close}
INSERT INTO sessions SELECT 1, source, created_at, created_at, '2026-11-02T00:00:00.000Z', NULL
  FROM staging WHERE true ORDER BY source, created_at ON CONFLICT DO NOTHING;
COMMIT;
"""
SQLITE_CLOSE = """CREATE INDEX staging_key ON staging (source, created_at);
UPDATE sessions SET closed_at = '2026-11-02T00:05:00.000Z'
  WHERE account_id = 1 AND closed_at IS NULL AND NOT EXISTS (
    SELECT 1 FROM staging t WHERE t.source = sessions.source
      AND t.created_at = sessions.session_created_at);"""

PG_SCHEMA = """
CREATE TABLE sessions (
    account_id BIGINT NOT NULL, source TEXT NOT NULL, session_created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL, first_seen_at TIMESTAMPTZ NOT NULL, closed_at TIMESTAMPTZ,
    PRIMARY KEY (account_id, source, session_created_at));
CREATE INDEX sessions_open ON sessions (account_id, source, session_created_at)
    WHERE closed_at IS NULL;
"""
PG_LOAD = """
CREATE TEMP TABLE staging (source TEXT, created_at TIMESTAMPTZ);
\\copy staging FROM '{csv}' WITH (FORMAT csv, HEADER true)
ANALYZE staging;
BEGIN;
{close}
INSERT INTO sessions SELECT 1, source, created_at, created_at, '2026-11-02T00:00:00Z', NULL
  FROM staging ORDER BY source, created_at ON CONFLICT DO NOTHING;
COMMIT;
"""
PG_CLOSE = """UPDATE sessions s SET closed_at = '2026-11-02T00:05:00Z'
  WHERE s.account_id = 1 AND s.closed_at IS NULL AND NOT EXISTS (
    SELECT 1 FROM staging t WHERE t.source = s.source AND t.created_at = s.session_created_at);"""


def measured(cmd, **kw):
    """Runs cmd; returns (seconds, peak RSS in MiB) of the child, failing loudly."""
    out = tempfile.TemporaryFile()
    start = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, **kw)
    _, status, usage = os.wait4(p.pid, 0)
    elapsed = time.perf_counter() - start
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        out.seek(0)
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{out.read().decode(errors='replace')[-3000:]}")
    return elapsed, usage.ru_maxrss / 1024


def pg_url(name, server=None):
    u = urlparse(server or PG_ADMIN)
    return urlunparse(u._replace(path="/" + name))


def psql(url, sql, *extra):
    return subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", url, *extra, "-c", sql],
                          check=True, capture_output=True, text=True).stdout


def fresh_pg(name):
    psql(PG_ADMIN, f"DROP DATABASE IF EXISTS {name}")
    psql(PG_ADMIN, f"CREATE DATABASE {name}")
    return pg_url(name)


def write_config(path, db_url, vendor_url, customers, max_concurrent, cron=None):
    with open(path, "w") as f:
        f.write(f'database_url = "{db_url}"\n[api]\nbase_url = "{vendor_url}"\n'
                'allow_insecure_http = true\nusername = "bench"\ntoken = "bench"\n'
                'timeout_secs = 60\n'
                f'[schedule]\nmax_concurrent = {max_concurrent}\n'
                + (f'cron = "{cron}"\n' if cron else "")
                + '[sync]\nmax_download_bytes = 100000000000\n')
        for c in customers:
            f.write(f"[[accounts]]\ncustomer_id = {c}\n")


class Bench:
    def __init__(self, work, vendor_url):
        self.work = work
        self.vendor_url = vendor_url
        self.rows = []

    def csv(self, customer):
        return os.path.join(self.work, f"{customer}.csv")

    def add(self, measure, rows, secs, rss, base_secs, note=""):
        self.rows.append((measure, rows, secs, rss, base_secs, note))
        # As it comes, too: a long run stopped half-way keeps what it measured.
        ratio = f" ({secs / base_secs:.2f}x the limit)" if base_secs else ""
        print(f"  {measure}: {secs:.2f} s{ratio}", flush=True)

    def config(self, name, db_url, customers, max_concurrent=4, cron=None):
        path = os.path.join(self.work, f"{name}.toml")
        write_config(path, db_url, self.vendor_url, customers, max_concurrent, cron)
        return path

    def sync(self, config, *args):
        return measured([BIN, "sync", "--config", config, *args], env={**os.environ, "RUST_LOG": "warn"})

    # -- SQLite -----------------------------------------------------------------------------
    def sqlite_limit(self, csv, repeats):
        db = os.path.join(self.work, "limit.db")
        for f in (db, db + "-wal", db + "-shm"):
            if os.path.exists(f):
                os.remove(f)
        subprocess.run(["sqlite3", db, "PRAGMA journal_mode=WAL;" + SQLITE_SCHEMA], check=True,
                       capture_output=True)
        first, _ = measured(["sqlite3", db], stdin=open_text(SQLITE_LOAD.format(csv=csv, close="")))
        again = [measured(["sqlite3", db],
                          stdin=open_text(SQLITE_LOAD.format(csv=csv, close=SQLITE_CLOSE)))[0]
                 for _ in range(repeats)]
        return first, median(again)

    def sqlite_runs(self):
        csv = self.csv(CUSTOMER_LARGE)
        limit_first, limit_again = self.sqlite_limit(csv, 3)
        db = os.path.join(self.work, "ss.db")
        cfg = self.config("sqlite", f"sqlite://{db}", [CUSTOMER_LARGE, CUSTOMER_HUGE])
        measured([BIN, "migrate", "--config", cfg])
        secs, rss = self.sync(cfg, "--customer", str(CUSTOMER_LARGE))
        self.add("SQLite: first sync", ROWS_LARGE, secs, rss, limit_first)
        size_before = db_size(db)
        again = []
        for _ in range(REPEATS):
            s, r = self.sync(cfg, "--customer", str(CUSTOMER_LARGE))
            again.append(s)
        size_after = db_size(db)
        self.add("SQLite: second poll, right after the first load", ROWS_LARGE, again[0], r,
                 limit_again, "unchanged snapshot")
        self.add(f"SQLite: unchanged sync (median of {REPEATS})", ROWS_LARGE, median(again), r,
                 limit_again,
                 f"database + WAL {size_before / 2**20:.0f} -> {size_after / 2**20:.0f} MiB after {REPEATS} polls")
        self.add(f"SQLite: unchanged sync (worst of {REPEATS})", ROWS_LARGE, max(again), r,
                 limit_again)
        self.rss_large = rss
        secs, rss = self.sync(cfg, "--customer", str(CUSTOMER_HUGE))
        self.add("SQLite: first sync, 5x rows", ROWS_HUGE, secs, rss, None,
                 f"peak RSS {rss / self.rss_large:.2f}x the 1x-rows sync")
        self.large_secs = self.rows[0][2]

        db = os.path.join(self.work, "many.db")
        cfg = self.config("many", f"sqlite://{db}", range(FIRST_MANY, FIRST_MANY + MANY_ACCOUNTS), 8)
        measured([BIN, "migrate", "--config", cfg])
        secs, rss = self.sync(cfg)
        self.add(f"SQLite: {MANY_ACCOUNTS} accounts x {ROWS_EACH}, max_concurrent 8",
                 MANY_ACCOUNTS * ROWS_EACH, secs, rss, self.large_secs,
                 "baseline: the same rows as one account (session-sync)")

    # -- PostgreSQL -------------------------------------------------------------------------
    def pg_limit(self, csv, repeats):
        url = fresh_pg("bench_limit")
        psql(url, PG_SCHEMA)
        first, _ = measured(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", url],
                            stdin=open_text(PG_LOAD.format(csv=csv, close="")))
        # As a careful script would (and session-sync does) after a large load: without it the
        # repeated polls below would be planned on an empty table's statistics, and cost the
        # square of the snapshot.
        psql(url, "ANALYZE sessions")
        again = [measured(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", url],
                          stdin=open_text(PG_LOAD.format(csv=csv, close=PG_CLOSE)))[0]
                 for _ in range(repeats)]
        return first, median(again)

    def pg_runs(self):
        csv = self.csv(CUSTOMER_LARGE)
        limit_first, limit_again = self.pg_limit(csv, 3)
        url = fresh_pg("bench_ss")
        cfg = self.config("pg", url, [CUSTOMER_LARGE])
        measured([BIN, "migrate", "--config", cfg])
        # The polls right after the first load run on statistics autovacuum never gathered:
        # only session-sync's own refresh keeps their plans linear.
        psql(url, "ALTER TABLE sessions SET (autovacuum_enabled = false)")
        secs, rss = self.sync(cfg)
        self.add("PostgreSQL: first sync", ROWS_LARGE, secs, rss, limit_first)
        stats = "SELECT pg_total_relation_size('sessions'), n_tup_ins + n_tup_upd + n_tup_del, n_dead_tup FROM pg_stat_user_tables WHERE relname = 'sessions'"
        size0, writes0, _ = psql(url, stats, "-At", "-F", " ").split()
        again = []
        for _ in range(REPEATS):
            s, r = self.sync(cfg)
            again.append(s)
        time.sleep(1.5)  # statistics are flushed about once a second
        size1, writes1, dead1 = psql(url, stats, "-At", "-F", " ").split()
        self.add("PostgreSQL: second poll, right after the first load", ROWS_LARGE, again[0], r,
                 limit_again, "unchanged snapshot; autovacuum off on sessions")
        self.add(f"PostgreSQL: unchanged sync (median of {REPEATS})", ROWS_LARGE, median(again), r,
                 limit_again,
                 f"sessions {int(size0) / 2**20:.0f} -> {int(size1) / 2**20:.0f} MiB, "
                 f"{int(writes1) - int(writes0)} row writes, {dead1} dead tuples after {REPEATS} polls")
        self.add(f"PostgreSQL: unchanged sync (worst of {REPEATS})", ROWS_LARGE, max(again), r,
                 limit_again)
        if PG_BOUNCER:
            cfg = self.config("pgbouncer", pg_url("bench_ss", PG_BOUNCER), [CUSTOMER_LARGE])
            through = [self.sync(cfg)[0] for _ in range(max(3, REPEATS // 2))]
            self.add(f"PostgreSQL via PgBouncer: unchanged sync (median of {len(through)})",
                     ROWS_LARGE, median(through), r, limit_again,
                     f"worst {max(through):.2f} s; pool_mode = transaction")

    # -- This build against another -------------------------------------------------------
    def compare(self):
        """This build and BENCH_OTHER_BIN, each on its own database, poll for poll, on both
        backends: a first sync, unchanged polls, and polls that slide the snapshot by 5%
        (5% of the sessions close, 5% are new: the close and insert steps do real work)."""
        large = self.csv(CUSTOMER_LARGE)
        original = large + ".original"
        shutil.copy(large, original)
        slides = []
        for k in range(1, max(3, REPEATS // 2) + 1):
            path = os.path.join(self.work, f"slide-{k}.csv")
            subprocess.run([VENDOR, "generate", "--rows", str(ROWS_LARGE), "--seed",
                            str(CUSTOMER_LARGE), "--skip", str(k * ROWS_LARGE // 20),
                            "--out", path], check=True)
            slides.append(path)
        backends = ["SQLite"] + (["PostgreSQL"] if PG_ADMIN else [])
        for backend in backends:
            configs = {}
            for name, binary in (("this", BIN), ("other", OTHER_BIN)):
                if backend == "SQLite":
                    url = "sqlite://" + os.path.join(self.work, f"compare-{name}.db")
                else:
                    url = fresh_pg(f"bench_compare_{name}")
                config = self.config(f"compare-{backend}-{name}", url, [CUSTOMER_LARGE])
                measured([binary, "migrate", "--config", config])
                configs[name] = (binary, config)

            def both():
                times = {}
                for name in ("this", "other"):
                    binary, config = configs[name]
                    times[name] = measured([binary, "sync", "--config", config],
                                           env={**os.environ, "RUST_LOG": "warn"})[0]
                return times["this"], times["other"]

            shutil.copy(original, large)
            phases = [("first sync", [both()])]
            phases.append(("unchanged poll", [both() for _ in range(max(3, REPEATS // 2))]))
            sliding = []
            for path in slides:
                shutil.copy(path, large)
                sliding.append(both())
            phases.append(("sliding poll (5% closed, 5% new)", sliding))
            shutil.copy(original, large)
            for phase, pairs in phases:
                this = median([t for t, _ in pairs])
                other = median([o for _, o in pairs])
                worst = max(t / o for t, o in pairs)
                self.add(f"{backend}: {phase}, this build / other", ROWS_LARGE, this, None, other,
                         f"median of {len(pairs)}; worst pair {worst:.2f}x; other: {OTHER_BIN}")

    # -- Several instances, one tick ------------------------------------------------------
    def pg_scale(self):
        """One cron tick of SCALE_ACCOUNTS accounts, first with one instance, then with
        SCALE_INSTANCES on the same PostgreSQL through PgBouncer (transaction mode)."""
        if not PG_BOUNCER:
            print("scale case skipped: SESSION_SYNC_TEST_PGBOUNCER_URL is not set (bench/run sets it)")
            return
        print(f"  generating {SCALE_ACCOUNTS} snapshots of {SCALE_ROWS} rows ...", flush=True)
        subprocess.run([VENDOR, "generate-many", "--first", str(FIRST_SCALE), "--accounts",
                        str(SCALE_ACCOUNTS), "--rows", str(SCALE_ROWS), "--dir", self.work],
                       check=True)
        customers = range(FIRST_SCALE, FIRST_SCALE + SCALE_ACCOUNTS)
        single = None
        for instances in (1, SCALE_INSTANCES):
            name = f"bench_scale_{instances}"
            fresh_pg(name)
            url = pg_url(name, PG_BOUNCER)
            # Register the accounts once, with a schedule that never fires, to time start-up.
            idle = self.config(f"{name}-idle", url, customers, cron="0 0 0 1 1 *")
            measured([BIN, "migrate", "--config", idle])
            started = time.perf_counter()
            daemon = Daemon(idle)
            daemon.stop()
            startup = time.perf_counter() - started
            # The tick: far enough ahead for every instance to start.
            tick = (datetime.datetime.now(datetime.timezone.utc)
                    + datetime.timedelta(seconds=2 * startup + 20)).replace(microsecond=0)
            cron = f"{tick.second} {tick.minute} {tick.hour} * * *"
            cfg = self.config(name, url, customers, cron=cron)
            daemons = [Daemon(cfg) for _ in range(instances)]
            peak = [0]
            done = threading.Event()

            def sample():
                query = f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{name}'"
                while not done.is_set():
                    peak[0] = max(peak[0], int(psql(PG_ADMIN, query, "-At").strip()))
                    time.sleep(0.2)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            deadline = time.time() + (tick.timestamp() - time.time()) + 1800
            finished = "SELECT count(*) FROM sync_runs WHERE finished_at IS NOT NULL"
            while int(psql(pg_url(name), finished, "-At").strip()) < SCALE_ACCOUNTS:
                if time.time() > deadline:
                    sys.exit(f"scale case: the tick did not finish within 30 minutes")
                time.sleep(0.5)
            done.set()
            sampler.join()
            rss = max(d.stop() for d in daemons)
            db = pg_url(name)
            q = lambda sql: psql(db, sql, "-At", "-F", " ").strip()
            took = float(q(f"SELECT extract(epoch FROM max(finished_at)) - {tick.timestamp()} FROM sync_runs"))
            once = q("SELECT count(*) FROM (SELECT account_id FROM sync_runs GROUP BY 1 "
                     "HAVING count(*) <> 1) x")
            ok = q("SELECT count(DISTINCT account_id) FROM sync_runs WHERE status = 'succeeded'")
            shares = q("SELECT string_agg(n::text, '/' ORDER BY n DESC) FROM "
                       "(SELECT count(*) AS n FROM account_claims GROUP BY holder) x")
            exactly_once = once == "0" and int(ok) == SCALE_ACCOUNTS
            note = (f"start-up {startup:.1f} s; accounts synced exactly once: "
                    f"{'yes' if exactly_once else 'NO'} ({ok} succeeded); accounts per instance "
                    f"{shares}; server connections at most {peak[0]} (pool {os.environ.get('SESSION_SYNC_TEST_PGBOUNCER_POOL_SIZE', '?')}), client pools "
                    f"{instances} x {2 * 4 + 2}")
            if single is None:
                single = took
                self.add(f"PgBouncer: one tick, 1 instance x {SCALE_ACCOUNTS} accounts x {SCALE_ROWS}",
                         SCALE_ACCOUNTS * SCALE_ROWS, took, rss, None, note)
            else:
                self.add(f"PgBouncer: one tick, {instances} instances x {SCALE_ACCOUNTS} accounts",
                         SCALE_ACCOUNTS * SCALE_ROWS, took, rss, single,
                         "baseline: the same tick with 1 instance; " + note)
            if not exactly_once:
                sys.exit(f"scale case: some account was not synced exactly once: {note}")

    def report(self):
        print()
        print(f"{'measure':<52} {'rows':>9} {'time s':>8} {'rows/s':>10} {'RSS MiB':>8} "
              f"{'limit s':>8} {'ratio':>6}  notes")
        for measure, rows, secs, rss, base, note in self.rows:
            ratio = f"{secs / base:.2f}" if base else "-"
            base_s = f"{base:.2f}" if base else "-"
            rss = rss if rss is not None else float("nan")
            print(f"{measure:<52} {rows:>9} {secs:>8.2f} {rows / secs:>10.0f} {rss:>8.1f} "
                  f"{base_s:>8} {ratio:>6}  {note}")


class Daemon:
    """`session-sync run` with JSON logs; returns once it has logged "scheduler started"."""

    def __init__(self, config):
        env = {**os.environ, "RUST_LOG": "info"}
        self.p = subprocess.Popen([BIN, "--log-format", "json", "run", "--config", config],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                  env=env)
        ready = threading.Event()

        def drain():
            for line in self.p.stderr:
                try:
                    if json.loads(line).get("message") == "scheduler started":
                        ready.set()
                except ValueError:
                    pass

        threading.Thread(target=drain, daemon=True).start()
        if not ready.wait(600):
            self.p.kill()
            sys.exit(f"session-sync run did not start within 10 minutes ({config})")

    def stop(self):
        """SIGTERM; returns the daemon's peak RSS in MiB."""
        self.p.send_signal(signal.SIGTERM)
        _, status, usage = os.wait4(self.p.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"session-sync run exited {os.waitstatus_to_exitcode(status)}")
        return usage.ru_maxrss / 1024


def open_text(text):
    f = tempfile.TemporaryFile()
    f.write(text.encode())
    f.seek(0)
    return f


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def db_size(path):
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


def main():
    for tool in (BIN, VENDOR):
        if not os.path.exists(tool):
            sys.exit(f"{tool} is missing: run bench/run, which builds it")
    work = tempfile.mkdtemp(prefix="session-sync-bench.")
    try:
        print(f"generating snapshots in {work} (seed 1) ...", flush=True)
        gen = []
        if PARTS & {"sqlite", "pg", "compare"}:
            gen = [(CUSTOMER_LARGE, ROWS_LARGE)]
        if "sqlite" in PARTS:
            gen += [(CUSTOMER_HUGE, ROWS_HUGE)] + [
                (c, ROWS_EACH) for c in range(FIRST_MANY, FIRST_MANY + MANY_ACCOUNTS)]
        for customer, rows in gen:
            subprocess.run([VENDOR, "generate", "--rows", str(rows), "--seed", str(customer),
                            "--out", os.path.join(work, f"{customer}.csv")], check=True)
        vendor = subprocess.Popen([VENDOR, "serve", "--dir", work], stdout=subprocess.PIPE, text=True)
        try:
            url = vendor.stdout.readline().split()[-1]
            bench = Bench(work, url)
            if "sqlite" in PARTS:
                print("SQLite ...", flush=True)
                bench.sqlite_runs()
            if PG_ADMIN and "pg" in PARTS:
                print("PostgreSQL ...", flush=True)
                bench.pg_runs()
            if "compare" in PARTS:
                if not OTHER_BIN:
                    sys.exit("BENCH_PARTS=compare needs BENCH_OTHER_BIN (see bench/compare)")
                print(f"This build against {OTHER_BIN} ...", flush=True)
                bench.compare()
            if PG_ADMIN and "scale" in PARTS:
                print("Several instances, one tick ...", flush=True)
                bench.pg_scale()
            else:
                print("PostgreSQL skipped: SESSION_SYNC_TEST_POSTGRES_URL is not set (bench/run sets it)")
            bench.report()
        finally:
            vendor.terminate()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
