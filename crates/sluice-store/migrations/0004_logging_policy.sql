-- What a tenant's requests leave in the audit trail: off | metadata | redacted | full.
ALTER TABLE tenants ADD COLUMN logging_policy TEXT NOT NULL DEFAULT 'metadata';
