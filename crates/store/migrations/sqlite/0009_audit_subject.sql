-- Evidence export finds the event that recorded each envelope by its
-- subject and action (`change:payments/3`, `change.merge`).
CREATE INDEX audit_events_subject ON audit_events(subject, action, seq);
