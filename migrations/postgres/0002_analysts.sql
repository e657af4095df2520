-- What analysts query most, and the indexes their period questions need. The cookbook that
-- uses them is docs/analysts.md; migrations/sqlite/0002_analysts.sql has the same views.

-- Period questions (opened per day or hour, open at a past moment, observed lifetimes) find
-- their sessions by session_created_at; the primary key leads with account_id and source, so
-- without this every such question read the whole table and took longer as history grew.
-- A BRIN index: sessions are written in about the order they open (a poll inserts the new
-- ones and closes, rewriting, those about a day old), so each 1 MB range of the table holds
-- about a day of session_created_at and a week's question reads a week and a day of the
-- table. It is tiny (40 kB for 10 million sessions) and costs the sync's inserts next to
-- nothing, where a B-tree on (session_created_at, account_id) slowed a million-row first
-- load by over a third for no faster answers (bench/analysts --index-cost; figures in
-- docs/analysts.md). autosummarize summarizes each range once it is full instead of at the
-- next vacuum: until then a range is read whatever the period asked about.
-- Questions about one account use the primary key instead, and the open sessions of every
-- account the sessions_open partial index.
CREATE INDEX sessions_by_created ON sessions USING brin (session_created_at)
    WITH (autosummarize = on);

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
-- the poll's). day is a date; only days with at least one session have a row.
CREATE VIEW daily_opens AS
SELECT
    a.customer_id,
    a.sub_account_id,
    a.name AS account_name,
    (s.session_created_at AT TIME ZONE 'UTC')::date AS day,
    count(*) AS opened
FROM sessions s
JOIN accounts a ON a.id = s.account_id
GROUP BY a.customer_id, a.sub_account_id, a.name, (s.session_created_at AT TIME ZONE 'UTC')::date;
