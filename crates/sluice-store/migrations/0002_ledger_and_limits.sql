-- Limits, budgets, the cost ledger. Money is in micro-dollars (BIGINT) so sums are exact.

-- Limits of one scope: a tenant (scope_id = tenant id), a key (key id) or a feature
-- (tenant id + '/' + feature). NULL means unlimited.
CREATE TABLE limits (
    scope               TEXT NOT NULL,
    scope_id            TEXT NOT NULL,
    rpm                 BIGINT,
    tpm                 BIGINT,
    concurrent          BIGINT,
    usd_micros_per_day   BIGINT,
    usd_micros_per_month BIGINT,
    PRIMARY KEY (scope, scope_id)
);

-- Money held against each budget: reserved at admission, moved to spent at settlement.
-- period: 'd2026-11-29' or 'm2026-11' (UTC).
CREATE TABLE spend (
    scope            TEXT NOT NULL,
    scope_id         TEXT NOT NULL,
    period           TEXT NOT NULL,
    reserved_micros  BIGINT NOT NULL,
    spent_micros     BIGINT NOT NULL,
    PRIMARY KEY (scope, scope_id, period)
);

-- One row per admitted request: written (state 'reserved') before any backend is called,
-- settled exactly once afterwards, by the process that admitted it or by crash recovery.
CREATE TABLE ledger (
    request_id         TEXT PRIMARY KEY,
    created_ms         BIGINT NOT NULL,
    instance_id        TEXT NOT NULL,
    state              TEXT NOT NULL,
    tenant_id          TEXT NOT NULL,
    key_id             TEXT NOT NULL,
    feature            TEXT NOT NULL,
    route              TEXT NOT NULL,
    reserved_micros    BIGINT NOT NULL,
    budgets            TEXT NOT NULL,     -- spend rows held: scope|scope_id|period, ';'-separated
    backend            TEXT,
    model              TEXT,
    attempts           BIGINT,
    prompt_tokens      BIGINT,
    cached_tokens      BIGINT,
    completion_tokens  BIGINT,
    cost_micros        BIGINT,
    ttft_ms            DOUBLE PRECISION,
    duration_ms        DOUBLE PRECISION,
    status             BIGINT,
    outcome            TEXT,
    error_kind         TEXT,
    settled_ms         BIGINT
);
CREATE INDEX ledger_created ON ledger (created_ms);
CREATE INDEX ledger_tenant_created ON ledger (tenant_id, created_ms);
CREATE INDEX ledger_open ON ledger (state, instance_id);

-- Every attempt of a request (retries, fallbacks).
CREATE TABLE ledger_attempts (
    request_id   TEXT NOT NULL,
    attempt      BIGINT NOT NULL,
    backend      TEXT NOT NULL,
    status       BIGINT,
    outcome      TEXT NOT NULL,
    error        TEXT,
    duration_ms  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (request_id, attempt)
);

-- Running processes; a reservation whose process stopped (its heartbeat went stale, or its
-- pid is gone from the same host) is settled by recovery.
CREATE TABLE instances (
    id            TEXT PRIMARY KEY,
    host          TEXT NOT NULL,
    pid           BIGINT NOT NULL,
    started_ms    BIGINT NOT NULL,
    heartbeat_ms  BIGINT NOT NULL
);
