-- The seal of each subject whose rows a rule reads (`user:NAME`: the user's
-- state, password hash, e-mail addresses and memberships; `project:NAME`:
-- its default and protected branches; `grant:ID`: its decision): a digest
-- of those rows as of `seq`, the newest event about the subject when they
-- were last written, tagged under the event key kept outside the database.
-- Rows that no longer give the digest, or a seal older than the subject's
-- newest event, were written around custody.
CREATE TABLE subject_seals (
    subject TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    digest BLOB NOT NULL,
    mac BLOB NOT NULL
);
