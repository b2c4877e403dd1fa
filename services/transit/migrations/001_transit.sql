-- Transit's tables (its issuer keys are shared.keyring's): pseudonymous riders, the credentials
-- issued, every tap the gates uploaded, and the journeys priced from them.

-- The 16-byte pseudonym a ride code carries, for a rider's gateway subject.
CREATE TABLE riders (
    pseudonym bytea PRIMARY KEY CHECK (length(pseudonym) = 16),
    subject text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL
);

CREATE TABLE ride_credentials (
    credential_id bytea PRIMARY KEY CHECK (length(credential_id) = 16),
    pseudonym bytea NOT NULL REFERENCES riders,
    category text NOT NULL,
    kid text NOT NULL,
    not_before timestamptz NOT NULL,
    not_after timestamptz NOT NULL,
    issued_at timestamptz NOT NULL
);

-- Every tap, once: a gate's upload repeated, or sent again after being offline, adds nothing.
CREATE TABLE taps (
    tap_id uuid PRIMARY KEY,
    pseudonym bytea NOT NULL,
    credential_id bytea NOT NULL,
    station text NOT NULL,
    gate text NOT NULL,
    direction text NOT NULL CHECK (direction IN ('entry', 'exit')),
    at timestamptz NOT NULL,
    received_at timestamptz NOT NULL
);
CREATE INDEX taps_by_rider ON taps (pseudonym, at);

-- A journey as last priced, and what has been charged for it so far (charges are events the
-- wallet applies once each; a re-pricing charges the difference under a new charge id). When a
-- late tap re-pairs a rider's day, a journey's charges move to the journey that took its taps.
CREATE TABLE journeys (
    journey_id uuid PRIMARY KEY,
    pseudonym bytea NOT NULL,
    kind text NOT NULL,
    entry_tap uuid,
    exit_tap uuid,
    entry_station text,
    exit_station text,
    started_at timestamptz NOT NULL,
    amount_minor bigint,
    currency text,
    products text[] NOT NULL DEFAULT '{}',
    reason text,
    charged_minor bigint NOT NULL DEFAULT 0,
    charges int NOT NULL DEFAULT 0,
    priced_at timestamptz NOT NULL
);
CREATE INDEX journeys_by_rider ON journeys (pseudonym, started_at);
