-- A running import's owner touches this (wall-clock microseconds) while it works; a retry
-- under the same request id takes over an import whose owner stopped touching it.
ALTER TABLE imports ADD COLUMN heartbeat_at BIGINT NOT NULL DEFAULT 0;
