-- Bumped by every change that can invalidate an authentication cached by a running process
-- (a revoked key, a tenant's logging policy); processes poll it and drop their cache on change.
CREATE TABLE auth_epoch (id BIGINT PRIMARY KEY, n BIGINT NOT NULL);
INSERT INTO auth_epoch (id, n) VALUES (1, 0);
