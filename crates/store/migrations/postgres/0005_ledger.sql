-- The audit ledger: an RFC 6962 Merkle tree over audit_events in sequence
-- order, stored as its perfect subtrees. The node (level, idx) covers the
-- events idx·2^level + 1 .. (idx+1)·2^level; level 0 holds each event's leaf
-- hash (event seq = idx + 1). Written by the writer in the transaction of
-- the events it covers. Append-only, like the events.
CREATE TABLE ledger_nodes (
    level BIGINT NOT NULL,
    idx BIGINT NOT NULL,
    hash BYTEA NOT NULL,
    PRIMARY KEY (level, idx)
);

-- Signed tree heads (C2SP tlog-checkpoint in a signed note), one per size.
CREATE TABLE ledger_checkpoints (
    size BIGINT PRIMARY KEY,
    root BYTEA NOT NULL,
    note TEXT NOT NULL,
    at BIGINT NOT NULL
);

CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only';
END;
$$;
CREATE TRIGGER ledger_nodes_no_change BEFORE UPDATE OR DELETE ON ledger_nodes
FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER ledger_checkpoints_no_change BEFORE UPDATE OR DELETE ON ledger_checkpoints
FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
