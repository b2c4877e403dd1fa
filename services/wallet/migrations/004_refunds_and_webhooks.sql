-- Refunds of top-ups: a hold on the rider's wallet while the provider refunds, posted when
-- it confirms, voided if it fails. Outgoing webhooks: what we must tell a provider, kept until
-- it answered 2xx, with every attempt logged.

CREATE TABLE refunds (
    id uuid PRIMARY KEY,
    topup_id uuid NOT NULL REFERENCES topups,
    amount bigint NOT NULL CHECK (amount > 0),
    status text NOT NULL DEFAULT 'requested' CHECK (status IN ('requested', 'refunded', 'failed')),
    hold_id uuid NOT NULL REFERENCES transfers,
    resolved_by uuid REFERENCES transfers,
    created_at timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz,
    CHECK ((status = 'requested') = (resolved_by IS NULL))
);
CREATE INDEX refunds_topup ON refunds (topup_id);

CREATE TABLE webhook_deliveries (
    id uuid PRIMARY KEY,  -- the webhook-id the provider deduplicates on
    provider text NOT NULL,
    url text NOT NULL,
    event_type text NOT NULL,
    body bytea NOT NULL,
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts int NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    created_at timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';

CREATE TABLE webhook_attempts (
    delivery_id uuid NOT NULL REFERENCES webhook_deliveries,
    attempt int NOT NULL,
    at timestamptz NOT NULL DEFAULT now(),
    http_status int,
    error text,
    PRIMARY KEY (delivery_id, attempt)
);
