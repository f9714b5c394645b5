-- Each commit's record is written once; `seal` tags it under the event key
-- kept outside the database: the project, the commit, the push that first
-- brought it and its pusher (or the import grant), and the users it names
-- as author, committer and co-authors. A record edited around custody, or
-- one whose push was deleted or given another pusher, no longer matches.
ALTER TABLE commits ADD COLUMN seal TEXT;
