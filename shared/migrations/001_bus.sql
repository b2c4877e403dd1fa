-- The bus tables every service schema has: its outbox (events written with the state change
-- that caused them) and its inbox (ids of events it has applied, written with their effect).

CREATE TABLE outbox (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic text NOT NULL,
    partition int NOT NULL CHECK (partition >= 0),
    event_id uuid NOT NULL,
    body bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
-- The relay reads unpublished rows in order; published rows are kept for a retention window.
CREATE INDEX outbox_unpublished ON outbox (partition, seq) WHERE published_at IS NULL;
CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;

-- Wake the relay when events are written, instead of polling; one notification per statement,
-- and PostgreSQL folds identical ones within a transaction.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('cardless_outbox_' || TG_TABLE_SCHEMA, '');
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_written AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

CREATE TABLE inbox (
    event_id uuid PRIMARY KEY,
    topic text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX inbox_applied_at ON inbox (applied_at);
