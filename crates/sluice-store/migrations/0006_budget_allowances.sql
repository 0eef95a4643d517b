-- Budget allowances: a process reserves a slice of a budget once (spend.reserved_micros grows by
-- it) and admits many requests against it in memory. amount_micros is the part not yet spent;
-- when the process stops, recovery gives it back to the budget.
CREATE TABLE budget_allowances (
    instance_id    TEXT NOT NULL,
    scope          TEXT NOT NULL,
    scope_id       TEXT NOT NULL,
    period         TEXT NOT NULL,
    amount_micros  BIGINT NOT NULL,
    PRIMARY KEY (instance_id, scope, scope_id, period)
);

-- 1: the request was admitted against its process's allowances (its budgets list says which);
-- settling it moves its cost from the allowance to spent instead of releasing a hold of its own.
ALTER TABLE ledger ADD COLUMN allowance BIGINT NOT NULL DEFAULT 0;
