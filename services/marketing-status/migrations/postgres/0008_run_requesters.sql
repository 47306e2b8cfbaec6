-- Who asked for a workflow run: its changes are theirs in the audit trail, and a run that makes
-- contacts marketing needs that user's permission.
ALTER TABLE workflow_runs ADD COLUMN requested_by TEXT NOT NULL DEFAULT '';
