-- Builds of mainline commits, their logs, and the artifacts they made.

CREATE TABLE builds (
    id INTEGER PRIMARY KEY,
    project_id INTEGER NOT NULL REFERENCES projects(id),
    number INTEGER NOT NULL,
    commit_sha TEXT NOT NULL,
    branch TEXT NOT NULL,
    change_number INTEGER,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'error', 'skipped')),
    reason TEXT,
    attempt INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    lease_until INTEGER,
    queued_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    command TEXT,
    network INTEGER,
    pipeline_digest TEXT,
    script_digest TEXT,
    exit_code INTEGER,
    provenance TEXT,
    UNIQUE (project_id, number)
);
CREATE INDEX builds_queue ON builds(status, id);
CREATE INDEX builds_commit ON builds(project_id, commit_sha);

-- Every time a worker took a build: a job taken twice shows here.
CREATE TABLE build_attempts (
    build_id INTEGER NOT NULL REFERENCES builds(id),
    attempt INTEGER NOT NULL,
    worker TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    PRIMARY KEY (build_id, attempt)
);

CREATE TABLE build_logs (
    build_id INTEGER NOT NULL REFERENCES builds(id),
    seq INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (build_id, seq)
);

CREATE TABLE artifacts (
    id INTEGER PRIMARY KEY,
    project_id INTEGER NOT NULL REFERENCES projects(id),
    build_id INTEGER NOT NULL REFERENCES builds(id),
    name TEXT NOT NULL,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (build_id, name)
);
CREATE INDEX artifacts_digest ON artifacts(project_id, digest);
