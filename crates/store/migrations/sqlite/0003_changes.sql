-- Change requests, their heads and reviews.

CREATE TABLE changes (
    id INTEGER PRIMARY KEY,
    project_id INTEGER NOT NULL REFERENCES projects(id),
    number INTEGER NOT NULL,
    title TEXT NOT NULL,
    description TEXT NOT NULL,
    source_branch TEXT NOT NULL,
    target_branch TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('open', 'closed', 'merged')),
    head TEXT NOT NULL,
    opened_by INTEGER NOT NULL REFERENCES users(id),
    opened_at INTEGER NOT NULL,
    merged_by INTEGER REFERENCES users(id),
    merged_at INTEGER,
    merge_commit TEXT,
    -- Who asked for the change to be merged as soon as its gate opens.
    auto_merge_by INTEGER REFERENCES users(id),
    auto_merge_token TEXT,
    -- The gate key's signed change attestation (a DSSE envelope).
    attestation TEXT,
    UNIQUE (project_id, number)
);
CREATE INDEX changes_source ON changes(project_id, source_branch, state);

-- Every head a change has had, and the push that made it its head.
CREATE TABLE change_heads (
    change_id INTEGER NOT NULL REFERENCES changes(id),
    position INTEGER NOT NULL,
    head TEXT NOT NULL,
    push_id INTEGER REFERENCES pushes(id),
    at INTEGER NOT NULL,
    PRIMARY KEY (change_id, position)
);

-- Reviews are bound to the head they were given on.
CREATE TABLE reviews (
    id INTEGER PRIMARY KEY,
    change_id INTEGER NOT NULL REFERENCES changes(id),
    reviewer_id INTEGER NOT NULL REFERENCES users(id),
    verdict TEXT NOT NULL CHECK (verdict IN ('approve', 'request_changes', 'comment', 'withdraw')),
    head TEXT NOT NULL,
    message TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX reviews_change ON reviews(change_id, id);
