-- A merge is recorded before its target ref moves: the transaction that
-- records it writes its intent, and the ref moves by compare-and-swap from
-- `old_tip` to `new_tip` only after that transaction committed. An intent
-- not yet applied is rolled forward at start-up and whenever merges run, or
-- dropped (and its change reopened) when the ref no longer is where the
-- merge left from. One live intent per starting tip and ref: two merges
-- from the same tip cannot both be recorded.
CREATE TABLE merge_intents (
    id BIGSERIAL PRIMARY KEY,
    project_id BIGINT NOT NULL REFERENCES projects(id),
    change_number BIGINT NOT NULL,
    ref_name TEXT NOT NULL,
    old_tip TEXT NOT NULL,
    new_tip TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    created_at BIGINT NOT NULL,
    settled_at BIGINT
);
CREATE UNIQUE INDEX merge_intents_from ON merge_intents(project_id, ref_name, old_tip) WHERE state <> 'dropped';
CREATE INDEX merge_intents_pending ON merge_intents(state) WHERE state = 'pending';
CREATE INDEX merge_intents_commit ON merge_intents(project_id, new_tip);

-- One row that readiness probes rewrite to learn whether writes succeed
-- again after one failed (a full disk, a lost connection).
CREATE TABLE write_probe (
    id INTEGER PRIMARY KEY,
    at BIGINT NOT NULL
);
