-- session-sync's tables, SQLite dialect. Timestamps are UTC text, YYYY-MM-DDTHH:MM:SS.sssZ,
-- fixed width so that they sort in time order and SQLite's date functions read them.

-- One row per configured account. sub_account_id is NULL when the account has none; NULLs
-- never collide in a UNIQUE index, so each case gets its own partial unique index.
CREATE TABLE accounts (
    id             INTEGER PRIMARY KEY,
    customer_id    INTEGER NOT NULL,
    sub_account_id INTEGER,
    name           TEXT
);
CREATE UNIQUE INDEX accounts_customer_without_sub ON accounts (customer_id)
    WHERE sub_account_id IS NULL;
CREATE UNIQUE INDEX accounts_customer_with_sub ON accounts (customer_id, sub_account_id)
    WHERE sub_account_id IS NOT NULL;

-- One row per attempt to sync an account.
CREATE TABLE sync_runs (
    id                INTEGER PRIMARY KEY,
    account_id        INTEGER NOT NULL REFERENCES accounts (id),
    started_at        TEXT NOT NULL,
    finished_at       TEXT,
    status            TEXT NOT NULL
        CHECK (status IN ('running', 'succeeded', 'failed', 'abandoned')),
    rows_read         INTEGER NOT NULL DEFAULT 0,
    rows_rejected     INTEGER NOT NULL DEFAULT 0,
    sessions_new      INTEGER NOT NULL DEFAULT 0,
    sessions_reopened INTEGER NOT NULL DEFAULT 0,
    sessions_closed   INTEGER NOT NULL DEFAULT 0,
    error             TEXT
);
CREATE INDEX sync_runs_by_account ON sync_runs (account_id, status, started_at);

-- One row per session: (account, source, session_created_at). first_seen_at is the start of
-- the first successful run that listed it; closed_at the start of the first successful run
-- that no longer did (NULL while open). last_seen_at is derived in session_history rather
-- than written to every row on every poll.
-- account_id names a row of accounts but carries no FOREIGN KEY: a million-row snapshot would
-- pay a per-row check for what session-sync's own insert guarantees.
CREATE TABLE sessions (
    account_id         INTEGER NOT NULL,
    source             TEXT NOT NULL,
    session_created_at TEXT NOT NULL,
    expires_at         TEXT NOT NULL,
    first_seen_at      TEXT NOT NULL,
    closed_at          TEXT,
    PRIMARY KEY (account_id, source, session_created_at)
) WITHOUT ROWID;
-- Closing what a snapshot no longer lists looks at open sessions only, however long the
-- history grows.
CREATE INDEX sessions_open ON sessions (account_id, source, session_created_at)
    WHERE closed_at IS NULL;

-- Every CSV record a run could not use, with its 1-based line number (the header is line 1).
CREATE TABLE rejected_rows (
    id          INTEGER PRIMARY KEY,
    run_id      INTEGER NOT NULL REFERENCES sync_runs (id),
    line_number INTEGER NOT NULL,
    raw_record  TEXT NOT NULL,
    reason      TEXT NOT NULL
);
CREATE INDEX rejected_rows_by_run ON rejected_rows (run_id);

-- What analysts query. last_seen_at: for an open session, the start of the account's last
-- successful run; for a closed one, the start of the last successful run before it closed.
CREATE VIEW session_history AS
SELECT
    a.customer_id,
    a.sub_account_id,
    a.name AS account_name,
    s.source,
    s.session_created_at,
    s.expires_at,
    s.first_seen_at,
    CASE
        WHEN s.closed_at IS NULL THEN (
            SELECT max(r.started_at) FROM sync_runs r
            WHERE r.account_id = s.account_id AND r.status = 'succeeded')
        ELSE (
            SELECT max(r.started_at) FROM sync_runs r
            WHERE r.account_id = s.account_id AND r.status = 'succeeded'
              AND r.started_at < s.closed_at)
    END AS last_seen_at,
    s.closed_at,
    s.closed_at IS NULL AS is_open
FROM sessions s
JOIN accounts a ON a.id = s.account_id;
