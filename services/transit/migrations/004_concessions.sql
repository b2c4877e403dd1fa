-- Concession fares a rider proved with their city ID: transit asks identity (as an agency,
-- through the gateway) for the one claim that proves a category, for this rider's account
-- only; a verified answer grants the category, which their next ride credential carries.
CREATE TABLE concession_requests (
    request_id text PRIMARY KEY,  -- identity's verification request
    pseudonym bytea NOT NULL REFERENCES riders,
    category text NOT NULL,
    created_at timestamptz NOT NULL
);

CREATE TABLE concessions (
    pseudonym bytea NOT NULL REFERENCES riders,
    category text NOT NULL,
    granted_at timestamptz NOT NULL,
    request_id text NOT NULL,
    PRIMARY KEY (pseudonym, category)
);
