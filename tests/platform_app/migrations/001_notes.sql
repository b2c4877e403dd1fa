CREATE TABLE notes (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key text NOT NULL,
    n int NOT NULL
);
-- The effect of applying notes.written: one row per applied event, in the order applied.
CREATE TABLE applied (
    event_id uuid PRIMARY KEY,
    key text NOT NULL,
    n int NOT NULL,
    applied_order bigint GENERATED ALWAYS AS IDENTITY
);
