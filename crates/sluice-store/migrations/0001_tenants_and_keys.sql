-- Tenants and their API keys. Portable SQL: the same file runs on SQLite and PostgreSQL.
-- Times are Unix milliseconds; ids are random text made by the application.
CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_ms  BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id              TEXT PRIMARY KEY,
    prefix          TEXT NOT NULL UNIQUE,   -- public part of the key, for lookup
    hash            TEXT NOT NULL,          -- SHA-256 of the whole key, hex
    tenant_id       TEXT NOT NULL REFERENCES tenants(id),
    role            TEXT NOT NULL,          -- admin | member
    name            TEXT NOT NULL,
    created_ms      BIGINT NOT NULL,
    expires_ms      BIGINT,
    revoked_ms      BIGINT,
    revoked_reason  TEXT
);

CREATE INDEX api_keys_tenant ON api_keys (tenant_id);
