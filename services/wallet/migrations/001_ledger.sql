-- The ledger: accounts, immutable transfers and holds, with TigerBeetle's semantics.
--
-- Balances change only through create_transfers(), which applies a whole batch in one
-- statement. What must never break is enforced here, not in Python: limits by CHECK
-- constraints (row locks make them hold under any concurrency), one effect per transfer id by
-- the primary key, a hold resolving at most once by a trigger, and debits equal to credits per
-- ledger by a statement trigger over every change of balances.
--
-- Flag bits and result names follow TigerBeetle's (services/wallet/ledger.py mirrors them).

CREATE TABLE accounts (
    id uuid PRIMARY KEY,
    ledger int NOT NULL CHECK (ledger > 0),
    code int NOT NULL CHECK (code > 0),
    flags int NOT NULL DEFAULT 0,
    debits_pending bigint NOT NULL DEFAULT 0 CHECK (debits_pending >= 0),
    debits_posted bigint NOT NULL DEFAULT 0 CHECK (debits_posted >= 0),
    credits_pending bigint NOT NULL DEFAULT 0 CHECK (credits_pending >= 0),
    credits_posted bigint NOT NULL DEFAULT 0 CHECK (credits_posted >= 0),
    reference text,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- An account opens empty: balances move only by transfers (see accounts_open_empty).
    -- flag 2: debits_must_not_exceed_credits (a rider's wallet can never go below zero)
    CONSTRAINT debits_within_credits
        CHECK (flags & 2 = 0 OR debits_posted + debits_pending <= credits_posted),
    -- flag 4: credits_must_not_exceed_debits
    CONSTRAINT credits_within_debits
        CHECK (flags & 4 = 0 OR credits_posted + credits_pending <= debits_posted)
) WITH (fillfactor = 70);  -- room on the page for balance updates without index churn (HOT)

CREATE TABLE transfers (
    seq bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    id uuid PRIMARY KEY,
    -- No foreign keys to accounts: create_transfers() only writes accounts it has locked, and
    -- accounts are never deleted; the checks would cost a quarter of a batch's time.
    debit_account_id uuid NOT NULL,
    credit_account_id uuid NOT NULL,
    amount bigint NOT NULL CHECK (amount > 0),
    pending_id uuid REFERENCES transfers,
    ledger int NOT NULL,
    code int NOT NULL CHECK (code > 0),
    flags int NOT NULL,
    timeout_s int NOT NULL DEFAULT 0 CHECK (timeout_s >= 0),
    reference text,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK (debit_account_id <> credit_account_id),
    CHECK ((flags & 12 = 0) = (pending_id IS NULL))
);
-- An account's statement, newest first, by cursor.
CREATE INDEX transfers_debits ON transfers (debit_account_id, seq);
CREATE INDEX transfers_credits ON transfers (credit_account_id, seq);

-- One row per pending transfer; its resolution is written once.
CREATE TABLE holds (
    pending_id uuid PRIMARY KEY REFERENCES transfers,
    expires_at timestamptz,
    resolution text CHECK (resolution IN ('posted', 'voided', 'expired')),
    resolved_by uuid REFERENCES transfers,
    resolved_at timestamptz
);
CREATE INDEX holds_due ON holds (expires_at) WHERE resolution IS NULL AND expires_at IS NOT NULL;

CREATE FUNCTION holds_resolve_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.resolution IS NOT NULL THEN
        RAISE EXCEPTION 'hold % is already %', OLD.pending_id, OLD.resolution
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER holds_resolve_once BEFORE UPDATE ON holds
    FOR EACH ROW EXECUTE FUNCTION holds_resolve_once();

CREATE FUNCTION forbid_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% on %: the ledger is append-only; correct with a new transfer',
        TG_OP, TG_TABLE_NAME USING ERRCODE = 'integrity_constraint_violation';
END $$;
CREATE TRIGGER transfers_immutable BEFORE UPDATE OR DELETE OR TRUNCATE ON transfers
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();
CREATE TRIGGER accounts_kept BEFORE DELETE OR TRUNCATE ON accounts
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();
CREATE TRIGGER holds_kept BEFORE DELETE OR TRUNCATE ON holds
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();

CREATE FUNCTION accounts_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    unbalanced int;
BEGIN
    SELECT n.ledger INTO unbalanced
    FROM new_rows n JOIN old_rows o USING (id)
    GROUP BY n.ledger
    HAVING sum(n.debits_posted - o.debits_posted) <> sum(n.credits_posted - o.credits_posted)
        OR sum(n.debits_pending - o.debits_pending) <> sum(n.credits_pending - o.credits_pending)
    LIMIT 1;
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION 'ledger % would not balance: debits must equal credits', unbalanced
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER accounts_balanced AFTER UPDATE ON accounts
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION accounts_balanced();

CREATE FUNCTION accounts_open_empty() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.debits_pending <> 0 OR NEW.debits_posted <> 0
       OR NEW.credits_pending <> 0 OR NEW.credits_posted <> 0 THEN
        RAISE EXCEPTION 'account % must open with zero balances', NEW.id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER accounts_open_empty BEFORE INSERT ON accounts
    FOR EACH ROW EXECUTE FUNCTION accounts_open_empty();
