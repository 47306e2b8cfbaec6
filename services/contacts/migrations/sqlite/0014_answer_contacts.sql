-- The contacts an answer kept under a request id names (a JSON array), so erasing a contact
-- forgets the answers that hold what it was.
ALTER TABLE request_answers ADD COLUMN contact_ids TEXT NOT NULL DEFAULT '[]';
