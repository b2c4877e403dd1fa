-- Identity's tables (its signing keys are shared.keyring's): the credentials it issued (no
-- personal data: that travels in the credential only), their status lists, agencies' requests,
-- and the citizens' audit log.

-- Each list holds `size` two-bit statuses; a credential takes a random free index of the
-- newest list, and rows are never deleted, so an index is never given twice.
CREATE TABLE status_lists (
    list_id int PRIMARY KEY,
    size int NOT NULL CHECK (size > 0 AND size % 4 = 0),
    created_at timestamptz NOT NULL
);

-- A pseudonymous citizen: the id the audit log names, and the gateway subject (their phone's
-- sign-in) that may read it.
CREATE TABLE citizens (
    citizen_id text PRIMARY KEY,
    subject text UNIQUE,
    created_at timestamptz NOT NULL
);

CREATE TABLE credentials (
    credential_id text PRIMARY KEY,
    citizen_id text NOT NULL REFERENCES citizens,
    list_id int NOT NULL REFERENCES status_lists,
    status_index int NOT NULL CHECK (status_index >= 0),
    -- 0 valid, 1 invalid (revoked, for good), 2 suspended
    status smallint NOT NULL DEFAULT 0 CHECK (status IN (0, 1, 2)),
    holder_jkt text NOT NULL,
    issued_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    status_changed_at timestamptz,
    UNIQUE (list_id, status_index)
);
CREATE INDEX credentials_changed ON credentials (list_id) WHERE status <> 0;

-- An agency's request for claims. The disclosed claims wait here only until the agency reads
-- them once (or the request expires); the outcome stays.
CREATE TABLE verification_requests (
    request_id text PRIMARY KEY,
    agency text NOT NULL,
    purpose text NOT NULL,
    query jsonb NOT NULL,
    nonce text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    state text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'verified', 'rejected')),
    answered_at timestamptz,
    reason text,
    claims jsonb,
    claims_read_at timestamptz
);
CREATE INDEX verification_requests_unread ON verification_requests (expires_at)
    WHERE claims IS NOT NULL;

-- The audit log: entry n commits to entry n-1 (chain) and is leaf n of a Merkle tree whose
-- perfect subtrees are kept in audit_nodes; audit_head is the one row appends queue on.
CREATE TABLE audit_head (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    size bigint NOT NULL,
    chain bytea NOT NULL
);
INSERT INTO audit_head (size, chain) VALUES (0, '\x0000000000000000000000000000000000000000000000000000000000000000');

CREATE TABLE audit_log (
    seq bigint PRIMARY KEY CHECK (seq >= 0),
    at timestamptz NOT NULL,
    citizen text NOT NULL,
    agency text NOT NULL,
    purpose text NOT NULL,
    claims text[] NOT NULL,
    result text NOT NULL CHECK (result IN ('verified', 'rejected')),
    reason text,
    request_id text NOT NULL,
    leaf bytea NOT NULL,
    chain bytea NOT NULL
);
CREATE INDEX audit_log_citizen ON audit_log (citizen, seq);

CREATE TABLE audit_nodes (
    level smallint NOT NULL,
    idx bigint NOT NULL,
    hash bytea NOT NULL,
    PRIMARY KEY (level, idx)
);

CREATE TABLE audit_checkpoints (
    size bigint PRIMARY KEY,
    token text NOT NULL,
    created_at timestamptz NOT NULL
);

-- Append-only: the service never changes or removes an entry, a node or a checkpoint; the
-- database refuses it (`cardless audit verify` finds what someone with more rights did).
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: % on % refused', TG_OP, TG_TABLE_NAME;
END $$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_nodes_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_nodes
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE OR TRUNCATE
    ON audit_checkpoints FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
