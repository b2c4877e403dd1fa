-- Top-up orders: a rider asks to pay in through a provider; the provider's verified
-- notification credits the wallet once (the credit's transfer id derives from the order id).
-- Riders appear only by their pseudonymous id.

CREATE TABLE topups (
    id uuid PRIMARY KEY,
    rider text NOT NULL,
    account_id uuid NOT NULL REFERENCES accounts,
    provider text NOT NULL,
    amount bigint NOT NULL CHECK (amount > 0),
    currency char(3) NOT NULL,
    status text NOT NULL DEFAULT 'awaiting_payment'
        CHECK (status IN ('awaiting_payment', 'paid')),
    provider_reference text,
    transfer_id uuid REFERENCES transfers,
    created_at timestamptz NOT NULL DEFAULT now(),
    paid_at timestamptz,
    CHECK ((status = 'paid') = (transfer_id IS NOT NULL)),
    UNIQUE (provider, provider_reference)
);
CREATE INDEX topups_rider ON topups (rider, created_at);

-- Every notification a provider sent us, and what we did with it: the operator's answer to
-- "did you get our callback?", without the body (it may carry personal data).
CREATE TABLE provider_notifications (
    provider text NOT NULL,
    notification_id text NOT NULL,
    order_id uuid,
    outcome text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, notification_id, received_at)
);
