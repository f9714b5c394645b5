-- Ledger-key handovers: when the ledger key rotates, a checkpoint of the
-- tree that holds the rotation, whose body names the old and the new key
-- and which both keys sign. A watcher pinned to the old key follows the
-- log to the new one only through it. One per new key. Append-only.
CREATE TABLE ledger_handovers (
    to_key TEXT PRIMARY KEY,
    from_key TEXT NOT NULL,
    size BIGINT NOT NULL,
    root BYTEA NOT NULL,
    note TEXT NOT NULL,
    at BIGINT NOT NULL
);

CREATE TRIGGER ledger_handovers_no_change BEFORE UPDATE OR DELETE ON ledger_handovers
FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
