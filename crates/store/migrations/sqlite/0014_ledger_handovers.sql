-- Ledger-key handovers: when the ledger key rotates, a checkpoint of the
-- tree that holds the rotation, whose body names the old and the new key
-- and which both keys sign. A watcher pinned to the old key follows the
-- log to the new one only through it. One per new key. Append-only.
CREATE TABLE ledger_handovers (
    to_key TEXT PRIMARY KEY,
    from_key TEXT NOT NULL,
    size INTEGER NOT NULL,
    root BLOB NOT NULL,
    note TEXT NOT NULL,
    at INTEGER NOT NULL
);

CREATE TRIGGER ledger_handovers_no_update BEFORE UPDATE ON ledger_handovers
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER ledger_handovers_no_delete BEFORE DELETE ON ledger_handovers
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
