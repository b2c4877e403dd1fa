-- Idempotency-Key records (shared/idempotency.py), one per principal, route and key. A row with
-- no status is in flight: attempt `attempt` holds it until `lease_until`. A row with a status
-- holds the answer to replay (status, selected headers, body) until `expires_at`.

CREATE TABLE idempotency_keys (
    principal text NOT NULL,
    route text NOT NULL,
    key text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    fingerprint bytea NOT NULL,
    attempt uuid NOT NULL,
    lease_until timestamptz,
    status smallint CHECK (status BETWEEN 100 AND 499),
    headers jsonb,
    body bytea,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (principal, route, key),
    CONSTRAINT in_flight_or_answered CHECK (
        (status IS NULL) = (lease_until IS NOT NULL)
        AND (status IS NULL) = (headers IS NULL)
        AND (status IS NULL) = (body IS NULL)
    )
);
-- prune() forgets the oldest expired keys first, in bounded batches.
CREATE INDEX idempotency_keys_expires_at ON idempotency_keys (expires_at);
