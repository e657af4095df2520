-- The report (`session-sync report`, and the live page at / beside /metrics) draws the open
-- sessions over time as the successful polls saw them: each successful run now records how
-- many of its account's sessions were open once it was applied. NULL for runs that did not
-- succeed and for runs recorded before this migration (nothing can tell how many were open
-- then without replaying the history, which on a long one would make this migration slow).
ALTER TABLE sync_runs ADD COLUMN sessions_open INTEGER;
