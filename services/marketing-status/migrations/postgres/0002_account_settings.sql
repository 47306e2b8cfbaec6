-- What billing tells about each account, and the marketing contacts feature switch. Accounts
-- without a row have the feature (every account made since it exists).
CREATE TABLE account_settings (
    account_id TEXT PRIMARY KEY,
    -- starter, professional or enterprise; '' until billing has told.
    edition TEXT NOT NULL,
    marketing_contacts_enabled BOOLEAN NOT NULL,
    updated_at BIGINT NOT NULL
);
