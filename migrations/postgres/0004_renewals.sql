-- What a session means: why each one closed, the conversations that chains of renewed
-- sessions make, and the window's clock. migrations/sqlite/0004_renewals.sql has the same
-- contract. docs/analysts.md explains each, with recipes.

-- Why a session closed: 'renewed' when the run that closed it listed the same number (same
-- account) with a later session_created_at (the customer wrote again: the vendor opened a
-- new window), 'ended' when the number was gone; NULL while open.
--
-- The history so far, from what it holds: 'renewed' where a later session of the same number
-- was first seen by the run that closed this one (first_seen_at and closed_at are both the
-- start of a run, so they are equal exactly then), else 'ended'. A later session that was
-- already listed before that run is not seen as a renewal here; the sync sees it from now on.
--
-- Without rewriting every closed session (four minutes on ten million): the column is added
-- with 'ended' as its default, which PostgreSQL keeps in the catalog for the existing rows;
-- then only the open sessions (made NULL) and the renewed ones are written, and the default
-- is dropped, so that new sessions start NULL.
ALTER TABLE sessions ADD COLUMN closed_reason TEXT DEFAULT 'ended'
    CHECK (closed_reason IN ('renewed', 'ended'));
UPDATE sessions SET closed_reason = NULL WHERE closed_at IS NULL;
UPDATE sessions s SET closed_reason = 'renewed'
FROM sessions later
WHERE s.closed_at IS NOT NULL
  AND later.account_id = s.account_id AND later.source = s.source
  AND later.session_created_at > s.session_created_at
  AND later.first_seen_at = s.closed_at;
ALTER TABLE sessions ALTER COLUMN closed_reason DROP DEFAULT;

-- session_history gains closed_reason (as its last column, so existing queries keep theirs).
CREATE OR REPLACE VIEW session_history AS
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
    s.closed_at IS NULL AS is_open,
    s.closed_reason
FROM sessions s
JOIN accounts a ON a.id = s.account_id;

-- Conversations: one row per chain of sessions of one number in one account in which each
-- session was created before the previous one's expires_at (the customer wrote again while
-- the window was open, so the vendor renewed it); a new contact after a window expired starts
-- a new conversation. started_at is the first session's session_created_at, last_renewed_at
-- the last one's (equal to started_at when it was never renewed), sessions how many the
-- chain holds, ended_at the last session's closed_at (NULL while it is open), is_open
-- whether the last session is open. The windows read sessions in primary-key order, so no
-- sort is needed.
CREATE VIEW conversations AS
WITH chained AS (
    SELECT
        s.account_id,
        s.source,
        s.session_created_at,
        s.closed_at,
        CASE WHEN s.session_created_at < lag(s.expires_at) OVER w THEN 0 ELSE 1 END AS starts
    FROM sessions s
    WINDOW w AS (PARTITION BY s.account_id, s.source ORDER BY s.session_created_at)
), numbered AS (
    SELECT
        c.*,
        sum(c.starts) OVER (PARTITION BY c.account_id, c.source ORDER BY c.session_created_at
                            ROWS UNBOUNDED PRECEDING) AS chain
    FROM chained c
)
SELECT
    a.customer_id,
    a.sub_account_id,
    a.name AS account_name,
    n.source,
    min(n.session_created_at) AS started_at,
    max(n.session_created_at) AS last_renewed_at,
    count(*) AS sessions,
    (array_agg(n.closed_at ORDER BY n.session_created_at DESC))[1] AS ended_at,
    (array_agg(n.closed_at ORDER BY n.session_created_at DESC))[1] IS NULL AS is_open
FROM numbered n
JOIN accounts a ON a.id = n.account_id
GROUP BY a.customer_id, a.sub_account_id, a.name, n.account_id, n.source, n.chain;

-- The window's clock: open sessions, soonest to expire first, with the whole minutes left
-- (rounded down; negative once expires_at has passed while the vendor still lists it), by
-- the database's own clock.
CREATE VIEW expiring_sessions AS
SELECT
    a.customer_id,
    a.sub_account_id,
    a.name AS account_name,
    s.source,
    s.session_created_at,
    s.expires_at,
    floor(extract(epoch FROM s.expires_at - now()) / 60)::bigint AS minutes_left
FROM sessions s
JOIN accounts a ON a.id = s.account_id
WHERE s.closed_at IS NULL
ORDER BY s.expires_at, a.customer_id, a.sub_account_id IS NOT NULL, a.sub_account_id, s.source;
