-- shared.keyring's table, in the schema of each service that signs (Service.components):
-- one row per signing key. A key signs in [signs_from, signs_until) and stays published (in
-- the JWKS) until published_until, after everything it signed has expired. Keys follow each
-- other without overlap: the exclusion constraint keeps one key signing at any instant even
-- if two replicas (or their clocks) disagree about what is missing. IF NOT EXISTS: the
-- gateway's first migration made this same table before the keyring owned it.
CREATE TABLE IF NOT EXISTS signing_keys (
    kid text PRIMARY KEY,
    algorithm text NOT NULL CHECK (algorithm IN ('EdDSA', 'ES256')),
    -- Unencrypted PKCS #8 (DER): docs/decisions/006-gateway.md leaves room for a KMS instead.
    private_pkcs8 bytea NOT NULL,
    signs_from timestamptz NOT NULL UNIQUE,
    signs_until timestamptz NOT NULL,
    published_until timestamptz NOT NULL,
    CONSTRAINT signs_for_a_while CHECK (signs_from < signs_until),
    CONSTRAINT published_after_signing CHECK (signs_until < published_until),
    CONSTRAINT one_key_signs_at_a_time
        EXCLUDE USING gist (tstzrange(signs_from, signs_until) WITH &&)
);
