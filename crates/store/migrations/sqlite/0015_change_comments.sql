-- Comments on a line of a change's diff: anchored to the file, the line in
-- the file at the head it was written on, and that line's text (a later
-- head whose line differs shows it as outdated). A reply names its thread's
-- first comment; a thread is resolved as a whole.
CREATE TABLE change_comments (
    id INTEGER PRIMARY KEY,
    change_id INTEGER NOT NULL REFERENCES changes(id),
    author_id INTEGER NOT NULL REFERENCES users(id),
    head TEXT NOT NULL,
    path TEXT NOT NULL,
    line INTEGER NOT NULL CHECK (line >= 1),
    line_text TEXT NOT NULL,
    reply_to INTEGER REFERENCES change_comments(id),
    body TEXT NOT NULL,
    at INTEGER NOT NULL,
    resolved_by INTEGER REFERENCES users(id),
    resolved_at INTEGER
);
CREATE INDEX change_comments_change ON change_comments(change_id, id);
