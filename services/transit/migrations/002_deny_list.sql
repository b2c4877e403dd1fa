-- Who gates refuse: riders whose fare the wallet could not charge, until they top up. Each
-- change is a row numbered with the list's version after it, so a gate at version v is sent
-- the changes after v (a delta), and a new gate the whole list.
CREATE TABLE deny_changes (
    version bigint PRIMARY KEY CHECK (version > 0),
    pseudonym bytea NOT NULL,
    denied boolean NOT NULL,
    reason text NOT NULL,
    at timestamptz NOT NULL
);

CREATE TABLE denied (
    pseudonym bytea PRIMARY KEY,
    since_version bigint NOT NULL
);
