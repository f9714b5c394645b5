-- Who held which duty for each merged change, recorded by the merge itself,
-- and deployments of builds to environments with the decisions on them.

CREATE TABLE change_duties (
    change_id INTEGER NOT NULL REFERENCES changes(id),
    user_name TEXT NOT NULL,
    duty TEXT NOT NULL CHECK (duty IN ('author', 'reviewer')),
    PRIMARY KEY (change_id, user_name, duty)
);

CREATE TABLE deployments (
    id INTEGER PRIMARY KEY,
    project_id INTEGER NOT NULL REFERENCES projects(id),
    number INTEGER NOT NULL,
    environment TEXT NOT NULL,
    build_id INTEGER NOT NULL REFERENCES builds(id),
    status TEXT NOT NULL CHECK (status IN ('pending', 'queued', 'running', 'succeeded', 'failed', 'cancelled', 'rejected')),
    requested_by INTEGER REFERENCES users(id),
    break_glass_reason TEXT,
    reason TEXT,
    created_at INTEGER NOT NULL,
    queued_at INTEGER,
    started_at INTEGER,
    finished_at INTEGER,
    worker TEXT,
    lease_until INTEGER,
    attempt INTEGER NOT NULL DEFAULT 0,
    exit_code INTEGER,
    log TEXT NOT NULL DEFAULT '',
    attestation TEXT,
    UNIQUE (project_id, number)
);
CREATE INDEX deployments_environment ON deployments(project_id, environment, status);
CREATE INDEX deployments_build ON deployments(build_id);

CREATE TABLE deployment_decisions (
    id INTEGER PRIMARY KEY,
    deployment_id INTEGER NOT NULL REFERENCES deployments(id),
    user_id INTEGER NOT NULL REFERENCES users(id),
    kind TEXT NOT NULL CHECK (kind IN ('approve', 'reject', 'test_passed', 'test_failed')),
    message TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX deployment_decisions_deployment ON deployment_decisions(deployment_id, id);

-- What an auditor must look at: a break-glass deployment stays an open
-- finding until an admin who was not involved records a review of it.
CREATE TABLE findings (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    project_id INTEGER REFERENCES projects(id),
    subject TEXT NOT NULL,
    summary TEXT NOT NULL,
    involved TEXT NOT NULL,
    opened_at INTEGER NOT NULL,
    resolved_by INTEGER REFERENCES users(id),
    resolved_at INTEGER,
    resolution TEXT
);
CREATE INDEX findings_open ON findings(resolved_at, id);

-- Environment secrets, sealed: each version waits for the grant that makes
-- it current. Values are never stored in the clear, nor in any grant.
CREATE TABLE secrets (
    id INTEGER PRIMARY KEY,
    project_id INTEGER NOT NULL REFERENCES projects(id),
    environment TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    nonce TEXT NOT NULL,
    ciphertext TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'current', 'replaced')),
    set_by INTEGER NOT NULL REFERENCES users(id),
    set_at INTEGER NOT NULL,
    current_since INTEGER,
    UNIQUE (project_id, environment, name, version)
);
