-- Daily statements of provider and operator accounts, kept once their business day closed:
-- the same day always gives the same bytes, even if a late transaction commits a transfer
-- stamped inside it (that one is reported the next day).

CREATE TABLE statements (
    account_id uuid NOT NULL,  -- may have no account yet: a day with nothing is a statement too
    business_day date NOT NULL,
    owner text NOT NULL,
    csv bytea NOT NULL,
    json bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, business_day)
);
CREATE TRIGGER statements_kept BEFORE UPDATE OR DELETE OR TRUNCATE ON statements
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();
-- Posted movements of an account by time (statements read one day of one account).
CREATE INDEX transfers_debits_at ON transfers (debit_account_id, created_at);
CREATE INDEX transfers_credits_at ON transfers (credit_account_id, created_at);
