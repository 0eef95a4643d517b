-- The audit trail: an append-only hash chain. Each entry's hash covers its own canonical
-- serialization and the previous entry's hash; audit_head holds the chain's tip (and is the row
-- appenders lock, so processes sharing the database append one at a time); checkpoints carry an
-- HMAC under a server secret kept outside the database, so cutting the tail is detected too.
CREATE TABLE audit_log (
    seq        BIGINT PRIMARY KEY,
    ts_ms      BIGINT NOT NULL,
    kind       TEXT NOT NULL,
    tenant_id  TEXT,
    actor      TEXT,
    body       TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);
CREATE INDEX audit_log_ts ON audit_log (ts_ms);
CREATE INDEX audit_log_tenant ON audit_log (tenant_id, seq);

CREATE TABLE audit_head (
    id    BIGINT PRIMARY KEY,
    seq   BIGINT NOT NULL,
    hash  TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

CREATE TABLE audit_checkpoints (
    seq    BIGINT PRIMARY KEY,
    hash   TEXT NOT NULL,
    ts_ms  BIGINT NOT NULL,
    mac    TEXT NOT NULL
);
