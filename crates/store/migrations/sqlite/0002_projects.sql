-- Projects, their members and protected branches, and the push log.

CREATE TABLE projects (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    default_branch TEXT NOT NULL,
    visibility TEXT NOT NULL DEFAULT 'private' CHECK (visibility IN ('private')),
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE project_members (
    project_id INTEGER NOT NULL REFERENCES projects(id),
    user_id INTEGER NOT NULL REFERENCES users(id),
    role TEXT NOT NULL CHECK (role IN ('read', 'write', 'maintain')),
    grant_id INTEGER NOT NULL,
    added_at INTEGER NOT NULL,
    PRIMARY KEY (project_id, user_id)
);
CREATE INDEX project_members_user ON project_members(user_id);

-- The default branch is always protected; these are the others.
CREATE TABLE protected_branches (
    project_id INTEGER NOT NULL REFERENCES projects(id),
    branch TEXT NOT NULL,
    grant_id INTEGER NOT NULL,
    PRIMARY KEY (project_id, branch)
);

-- One row per accepted push, by the authenticated pusher.
CREATE TABLE pushes (
    id INTEGER PRIMARY KEY,
    project_id INTEGER NOT NULL REFERENCES projects(id),
    pusher_id INTEGER NOT NULL REFERENCES users(id),
    at INTEGER NOT NULL
);
CREATE INDEX pushes_project ON pushes(project_id, id);

CREATE TABLE push_updates (
    push_id INTEGER NOT NULL REFERENCES pushes(id),
    ref_name TEXT NOT NULL,
    old_id TEXT NOT NULL,
    new_id TEXT NOT NULL,
    PRIMARY KEY (push_id, ref_name)
);
CREATE INDEX push_updates_ref ON push_updates(ref_name);

-- Every commit that entered a repository, with the push that first brought
-- it, or the import grant that brought it in as unreviewed history.
CREATE TABLE commits (
    project_id INTEGER NOT NULL REFERENCES projects(id),
    sha TEXT NOT NULL,
    first_push_id INTEGER REFERENCES pushes(id),
    import_grant_id INTEGER,
    author_name TEXT NOT NULL,
    author_email TEXT NOT NULL,
    author_user_id INTEGER REFERENCES users(id),
    committer_name TEXT NOT NULL,
    committer_email TEXT NOT NULL,
    committer_user_id INTEGER REFERENCES users(id),
    PRIMARY KEY (project_id, sha)
);
CREATE INDEX commits_push ON commits(first_push_id);

CREATE TABLE commit_coauthors (
    project_id INTEGER NOT NULL,
    sha TEXT NOT NULL,
    position INTEGER NOT NULL,
    name TEXT NOT NULL,
    email TEXT NOT NULL,
    user_id INTEGER REFERENCES users(id),
    PRIMARY KEY (project_id, sha, position),
    FOREIGN KEY (project_id, sha) REFERENCES commits(project_id, sha)
);
