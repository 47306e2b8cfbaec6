-- Finds the contacts whose score is due without reading the others.
CREATE INDEX IF NOT EXISTS contacts_score_due ON contacts (score_due_at) WHERE score_due_at > 0;
