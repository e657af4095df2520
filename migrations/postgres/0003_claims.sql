-- Claims on accounts, so that several instances sharing this database never sync one account
-- at the same time, and a run that lost its claim never writes its snapshot. A lease, not a
-- session-level advisory lock: a transaction-mode pooler (PgBouncer, Supavisor, RDS Proxy)
-- hands each transaction to whichever server connection is free, so nothing held by a
-- connection outlives a transaction. How it works: store/mod.rs (`Claim`), and
-- docs/operations.md "Run several instances".
--
-- term      bumped by every claim: the fencing token a run checks when it applies.
-- holder    who claimed it last: "host:pid".
-- tick      the scheduled instant the last claim was for; a claim for the same tick (another
--           instance on the same schedule) is refused, so each account is synced once a tick.
-- expires_at the lease: the claim holds until then (the database's clock); renewed while the
--           run goes on, set to the claim's end when it is released.
CREATE TABLE account_claims (
    account_id BIGINT PRIMARY KEY REFERENCES accounts (id),
    term       BIGINT NOT NULL DEFAULT 0,
    holder     TEXT,
    tick       TIMESTAMPTZ,
    claimed_at TIMESTAMPTZ,
    expires_at TIMESTAMPTZ NOT NULL DEFAULT '-infinity'
);

INSERT INTO account_claims (account_id) SELECT id FROM accounts;
