-- Check runs: the pipeline's check command on each head of an open change.

CREATE TABLE check_runs (
    id INTEGER PRIMARY KEY,
    change_id INTEGER NOT NULL REFERENCES changes(id),
    head TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'passed', 'failed', 'error', 'not_required')),
    command TEXT,
    target_tip TEXT,
    exit_code INTEGER,
    log TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    UNIQUE (change_id, head)
);
CREATE INDEX check_runs_status ON check_runs(status, id);
