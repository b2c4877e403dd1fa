-- What each journey's rider owes (transit's latest statement of it, by version) and what the
-- wallet has taken for it. The difference is charged or refunded as a new transfer; a charge
-- the wallet could not take stays owed (due > taken) and is taken when the rider tops up.
CREATE TABLE fare_dues (
    journey_id uuid PRIMARY KEY,
    version int NOT NULL CHECK (version > 0),
    account_id uuid NOT NULL,
    rider text NOT NULL,
    operator text NOT NULL,
    currency char(3) NOT NULL,
    due bigint NOT NULL CHECK (due >= 0),
    taken bigint NOT NULL CHECK (taken >= 0),
    updated_at timestamptz NOT NULL
);
CREATE INDEX fare_dues_owed ON fare_dues (account_id) WHERE due > taken;
