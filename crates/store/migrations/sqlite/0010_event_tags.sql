-- Every audit event is authenticated as it is appended: `mac` is
-- HMAC-SHA-256, under the event key kept outside the database, over the
-- event's leaf hash and `prev`, the sequence number of the previous event
-- about the same subject (0 for the first). The chain per subject lets a
-- decision read all of a subject's events and know that none is missing.
-- Events written before this migration have neither (see the anchor's
-- `legacy`).
ALTER TABLE audit_events ADD COLUMN prev INTEGER;
ALTER TABLE audit_events ADD COLUMN mac BLOB;
CREATE INDEX audit_events_subject_seq ON audit_events(subject, seq);
