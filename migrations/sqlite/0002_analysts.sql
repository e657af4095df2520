-- What analysts query most. The cookbook that uses them is docs/analysts.md;
-- migrations/postgres/0002_analysts.sql has the same views.

-- No index on sessions.session_created_at here, unlike PostgreSQL (where a BRIN index costs
-- the sync nothing): SQLite has only B-trees, and one on session_created_at made a
-- million-row first load about three times slower (4.7 s to 14.0 s, bench/analysts
-- --index-cost: its inserts land all over the index). Period questions read the whole
-- table instead; docs/analysts.md says how fast that is, and how to add the index to a
-- database queried more than it is synced.

-- The feed's health over a period (runs per day, failures, rejected rows) finds its runs by
-- started_at; sync_runs_by_account leads with account_id. One row per run: cheap to keep.
CREATE INDEX sync_runs_by_started ON sync_runs (started_at);

-- Open sessions now, per account: those the account's last successful run listed (as_of is
-- that run's start; NULL before the first one). Every configured account has a row, 0 when
-- nothing is open.
CREATE VIEW open_sessions_now AS
SELECT
    a.customer_id,
    a.sub_account_id,
    a.name AS account_name,
    (SELECT count(*) FROM sessions s
     WHERE s.account_id = a.id AND s.closed_at IS NULL) AS open_sessions,
    (SELECT max(r.started_at) FROM sync_runs r
     WHERE r.account_id = a.id AND r.status = 'succeeded') AS as_of
FROM accounts a;

-- Sessions opened per UTC day, per account, by session_created_at (the vendor's own time, not
-- the poll's). day is 'YYYY-MM-DD' text; only days with at least one session have a row.
CREATE VIEW daily_opens AS
SELECT
    a.customer_id,
    a.sub_account_id,
    a.name AS account_name,
    date(s.session_created_at) AS day,
    count(*) AS opened
FROM sessions s
JOIN accounts a ON a.id = s.account_id
GROUP BY a.customer_id, a.sub_account_id, a.name, date(s.session_created_at);
