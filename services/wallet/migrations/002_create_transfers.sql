-- create_transfers(): a batch of transfers applied in order, in one statement, with one result
-- per transfer (TigerBeetle's semantics; services/wallet/ledger.py documents them).
--
-- Shape: lock what the batch touches (holds, then accounts, each in id order, so concurrent
-- batches never deadlock), run the transfers through in-memory balances, then write every
-- effect with one statement per table. A hot account (every fare credits the operator) is
-- therefore updated once per batch, not once per transfer. Expired holds are released first,
-- on database time.
--
-- Inputs are parallel arrays, one element per transfer; ids must be distinct within a batch.
-- For post/void, NULL accounts and 0 for amount, ledger and code mean "as the pending one".
-- An empty batch only releases expired holds: the wallet calls it so when it is idle.
-- t_invalid carries a result already decided from the transfer alone (ledger.py validates
-- that in Python) so that it still fails its linked chain here.

CREATE FUNCTION create_transfers(
    t_id uuid[], t_debit uuid[], t_credit uuid[], t_amount bigint[], t_pending uuid[],
    t_ledger int[], t_code int[], t_flags int[], t_timeout int[], t_reference text[],
    t_invalid text[]
) RETURNS TABLE (
    result text, debit_account_id uuid, credit_account_id uuid, amount bigint,
    ledger int, code int, created_at timestamptz
) LANGUAGE plpgsql AS $$
DECLARE
    max_amount CONSTANT bigint := 9223372036854775807;
    linked CONSTANT int := 1;
    pending CONSTANT int := 2;
    post CONSTANT int := 4;
    void CONSTANT int := 8;
    n int := coalesce(cardinality(t_id), 0);
    now_ timestamptz := now();
    -- accounts the batch touches, in id order, and their balances as the batch goes
    a_id uuid[]; a_ledger int[]; a_flags int[];
    dp bigint[]; dpo bigint[]; cp bigint[]; cpo bigint[];
    -- holds: pending transfers referenced by the batch, due to expire, or created in it
    h_id uuid[]; h_debit int[]; h_credit int[]; h_amount bigint[]; h_ledger int[];
    h_code int[]; h_expires timestamptz[]; h_state text[]; h_was text[]; h_by uuid[];
    -- per transfer: its accounts' and pending transfer's positions in the arrays above
    d_ix int[]; c_ix int[]; p_ix int[];
    -- an earlier transfer with the same id
    x_debit uuid[]; x_credit uuid[]; x_amount bigint[]; x_pending uuid[]; x_ledger int[];
    x_code int[]; x_flags int[]; x_timeout int[]; x_reference text[]; x_at timestamptz[];
    -- what each transfer did
    res text[] := array_fill(NULL::text, ARRAY[n]);
    o_debit uuid[] := array_fill(NULL::uuid, ARRAY[n]);
    o_credit uuid[] := array_fill(NULL::uuid, ARRAY[n]);
    o_amount bigint[] := array_fill(NULL::bigint, ARRAY[n]);
    o_ledger int[] := array_fill(NULL::int, ARRAY[n]);
    o_code int[] := array_fill(NULL::int, ARRAY[n]);
    o_at timestamptz[] := array_fill(NULL::timestamptz, ARRAY[n]);
    -- the open linked chain: where it started and the state to return to if it fails
    chain int; chain_failed bool := false;
    s_dp bigint[]; s_dpo bigint[]; s_cp bigint[]; s_cpo bigint[]; s_state text[]; s_by uuid[];
    s_holds int;
    i int; j int; d int; c int; amt bigint; f int; r text;
BEGIN
    IF (SELECT count(DISTINCT u) FROM unnest(t_id) u) <> n THEN
        RAISE EXCEPTION 'transfer ids must be distinct within a batch'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- Holds: those this batch posts or voids (waiting for their lock), then those that are due
    -- and not locked by another batch.
    SELECT array_agg(h.pending_id ORDER BY h.pending_id), array_agg(t.debit_account_id ORDER BY h.pending_id),
           array_agg(t.credit_account_id ORDER BY h.pending_id), array_agg(t.amount ORDER BY h.pending_id),
           array_agg(t.ledger ORDER BY h.pending_id), array_agg(t.code ORDER BY h.pending_id),
           array_agg(h.expires_at ORDER BY h.pending_id), array_agg(coalesce(h.resolution, 'pending') ORDER BY h.pending_id)
      INTO h_id, x_debit, x_credit, h_amount, h_ledger, h_code, h_expires, h_state
      FROM (SELECT * FROM holds WHERE pending_id = ANY(t_pending) ORDER BY pending_id FOR UPDATE) h
      JOIN transfers t ON t.id = h.pending_id;
    SELECT h_id || array_agg(h.pending_id), x_debit || array_agg(t.debit_account_id),
           x_credit || array_agg(t.credit_account_id), h_amount || array_agg(t.amount),
           h_ledger || array_agg(t.ledger), h_code || array_agg(t.code),
           h_expires || array_agg(h.expires_at), h_state || array_agg('pending'::text)
      INTO h_id, x_debit, x_credit, h_amount, h_ledger, h_code, h_expires, h_state
      FROM (SELECT * FROM holds
             WHERE resolution IS NULL AND expires_at <= now_
               AND pending_id <> ALL(coalesce(h_id, '{}'))
             ORDER BY expires_at LIMIT 1000 FOR UPDATE SKIP LOCKED) h
      JOIN transfers t ON t.id = h.pending_id;
    h_id := coalesce(h_id, '{}'); h_state := coalesce(h_state, '{}');
    h_was := h_state;
    h_by := array_fill(NULL::uuid, ARRAY[cardinality(h_id)]);

    -- Accounts, locked in id order.
    SELECT array_agg(a.id ORDER BY a.id), array_agg(a.ledger ORDER BY a.id),
           array_agg(a.flags ORDER BY a.id),
           array_agg(a.debits_pending ORDER BY a.id), array_agg(a.debits_posted ORDER BY a.id),
           array_agg(a.credits_pending ORDER BY a.id), array_agg(a.credits_posted ORDER BY a.id)
      INTO a_id, a_ledger, a_flags, dp, dpo, cp, cpo
      FROM (SELECT * FROM accounts
             WHERE id = ANY(t_debit || t_credit || x_debit || x_credit)
             ORDER BY id FOR UPDATE) a;
    a_id := coalesce(a_id, '{}');

    SELECT array_agg(d.ix::int ORDER BY t.ord), array_agg(c.ix::int ORDER BY t.ord),
           array_agg(p.ix::int ORDER BY t.ord)
      INTO d_ix, c_ix, p_ix
      FROM unnest(t_debit, t_credit, t_pending) WITH ORDINALITY t(debit, credit, pending_id, ord)
      LEFT JOIN unnest(a_id) WITH ORDINALITY d(id, ix) ON d.id = t.debit
      LEFT JOIN unnest(a_id) WITH ORDINALITY c(id, ix) ON c.id = t.credit
      LEFT JOIN unnest(h_id) WITH ORDINALITY p(id, ix) ON p.id = t.pending_id;
    SELECT array_agg(d.ix::int ORDER BY h.ord), array_agg(c.ix::int ORDER BY h.ord)
      INTO h_debit, h_credit
      FROM unnest(x_debit, x_credit) WITH ORDINALITY h(debit, credit, ord)
      JOIN unnest(a_id) WITH ORDINALITY d(id, ix) ON d.id = h.debit
      JOIN unnest(a_id) WITH ORDINALITY c(id, ix) ON c.id = h.credit;

    -- Holds past their timeout release what they held.
    FOR j IN 1 .. cardinality(h_id) LOOP
        IF h_state[j] = 'pending' AND h_expires[j] <= now_ THEN
            dp[h_debit[j]] := dp[h_debit[j]] - h_amount[j];
            cp[h_credit[j]] := cp[h_credit[j]] - h_amount[j];
            h_state[j] := 'expired';
        END IF;
    END LOOP;

    -- Transfers that already exist answer from what was stored.
    SELECT array_agg(x.debit_account_id ORDER BY t.ord), array_agg(x.credit_account_id ORDER BY t.ord),
           array_agg(x.amount ORDER BY t.ord), array_agg(x.pending_id ORDER BY t.ord),
           array_agg(x.ledger ORDER BY t.ord), array_agg(x.code ORDER BY t.ord),
           array_agg(x.flags ORDER BY t.ord), array_agg(x.timeout_s ORDER BY t.ord),
           array_agg(x.reference ORDER BY t.ord), array_agg(x.created_at ORDER BY t.ord)
      INTO x_debit, x_credit, x_amount, x_pending, x_ledger, x_code, x_flags, x_timeout,
           x_reference, x_at
      FROM unnest(t_id) WITH ORDINALITY t(id, ord) LEFT JOIN transfers x ON x.id = t.id;

    FOR i IN 1 .. n LOOP
        f := t_flags[i];
        IF chain IS NULL AND f & linked <> 0 THEN
            chain := i; chain_failed := false;
            s_dp := dp; s_dpo := dpo; s_cp := cp; s_cpo := cpo;
            s_state := h_state; s_by := h_by; s_holds := cardinality(h_id);
        END IF;
        r := NULL;
        IF chain_failed THEN
            r := 'linked_event_failed';
        ELSIF t_invalid[i] IS NOT NULL THEN
            r := t_invalid[i];
        ELSIF x_flags[i] IS NOT NULL THEN
            r := CASE
                WHEN x_flags[i] <> f THEN 'exists_with_different_flags'
                WHEN x_pending[i] IS DISTINCT FROM t_pending[i] THEN 'exists_with_different_pending_id'
                WHEN x_timeout[i] <> t_timeout[i] THEN 'exists_with_different_timeout'
                WHEN t_debit[i] IS NOT NULL AND x_debit[i] <> t_debit[i] THEN 'exists_with_different_debit_account_id'
                WHEN t_credit[i] IS NOT NULL AND x_credit[i] <> t_credit[i] THEN 'exists_with_different_credit_account_id'
                WHEN t_amount[i] <> 0 AND x_amount[i] <> t_amount[i] THEN 'exists_with_different_amount'
                WHEN t_ledger[i] <> 0 AND x_ledger[i] <> t_ledger[i] THEN 'exists_with_different_ledger'
                WHEN t_code[i] <> 0 AND x_code[i] <> t_code[i] THEN 'exists_with_different_code'
                WHEN x_reference[i] IS DISTINCT FROM t_reference[i] THEN 'exists_with_different_reference'
                ELSE 'exists' END;
            IF r = 'exists' THEN
                o_debit[i] := x_debit[i]; o_credit[i] := x_credit[i]; o_amount[i] := x_amount[i];
                o_ledger[i] := x_ledger[i]; o_code[i] := x_code[i]; o_at[i] := x_at[i];
            END IF;
        ELSIF f & (post | void) <> 0 THEN
            j := coalesce(p_ix[i], array_position(h_id, t_pending[i]));
            IF j IS NULL THEN
                j := array_position(t_id[1:i], t_pending[i]);
                r := CASE WHEN res[j] = 'created'
                            OR EXISTS (SELECT 1 FROM transfers WHERE id = t_pending[i])
                          THEN 'pending_transfer_not_pending' ELSE 'pending_transfer_not_found' END;
            ELSE
                d := h_debit[j]; c := h_credit[j];
                amt := CASE WHEN f & void <> 0 OR t_amount[i] = 0 THEN h_amount[j] ELSE t_amount[i] END;
                r := CASE
                    WHEN t_debit[i] IS NOT NULL AND t_debit[i] <> a_id[d] THEN 'pending_transfer_has_different_debit_account_id'
                    WHEN t_credit[i] IS NOT NULL AND t_credit[i] <> a_id[c] THEN 'pending_transfer_has_different_credit_account_id'
                    WHEN t_ledger[i] <> 0 AND t_ledger[i] <> h_ledger[j] THEN 'pending_transfer_has_different_ledger'
                    WHEN t_code[i] <> 0 AND t_code[i] <> h_code[j] THEN 'pending_transfer_has_different_code'
                    WHEN amt > h_amount[j] THEN 'exceeds_pending_transfer_amount'
                    WHEN f & void <> 0 AND t_amount[i] NOT IN (0, h_amount[j]) THEN 'pending_transfer_has_different_amount'
                    WHEN h_state[j] = 'posted' THEN 'pending_transfer_already_posted'
                    WHEN h_state[j] = 'voided' THEN 'pending_transfer_already_voided'
                    WHEN h_state[j] = 'expired' THEN 'pending_transfer_expired'
                    WHEN f & post <> 0 AND amt > max_amount - dpo[d] THEN 'overflows_debits_posted'
                    WHEN f & post <> 0 AND amt > max_amount - cpo[c] THEN 'overflows_credits_posted'
                    ELSE 'created' END;
                IF r = 'created' THEN
                    dp[d] := dp[d] - h_amount[j]; cp[c] := cp[c] - h_amount[j];
                    IF f & post <> 0 THEN
                        dpo[d] := dpo[d] + amt; cpo[c] := cpo[c] + amt;
                    END IF;
                    h_state[j] := CASE WHEN f & post <> 0 THEN 'posted' ELSE 'voided' END;
                    h_by[j] := t_id[i];
                    o_debit[i] := a_id[d]; o_credit[i] := a_id[c]; o_amount[i] := amt;
                    o_ledger[i] := h_ledger[j]; o_code[i] := h_code[j];
                END IF;
            END IF;
        ELSE
            d := d_ix[i]; c := c_ix[i]; amt := t_amount[i];
            r := CASE
                WHEN d IS NULL THEN 'debit_account_not_found'
                WHEN c IS NULL THEN 'credit_account_not_found'
                WHEN a_ledger[d] <> a_ledger[c] THEN 'accounts_must_have_the_same_ledger'
                WHEN t_ledger[i] <> a_ledger[d] THEN 'transfer_must_have_the_same_ledger_as_accounts'
                WHEN a_flags[d] & 32 <> 0 THEN 'debit_account_already_closed'
                WHEN a_flags[c] & 32 <> 0 THEN 'credit_account_already_closed'
                WHEN f & pending <> 0 AND amt > max_amount - dp[d] THEN 'overflows_debits_pending'
                WHEN f & pending <> 0 AND amt > max_amount - cp[c] THEN 'overflows_credits_pending'
                WHEN f & pending = 0 AND amt > max_amount - dpo[d] THEN 'overflows_debits_posted'
                WHEN f & pending = 0 AND amt > max_amount - cpo[c] THEN 'overflows_credits_posted'
                WHEN amt > max_amount - dp[d] - dpo[d] THEN 'overflows_debits'
                WHEN amt > max_amount - cp[c] - cpo[c] THEN 'overflows_credits'
                WHEN a_flags[d] & 2 <> 0 AND dp[d] + dpo[d] + amt > cpo[d] THEN 'exceeds_credits'
                WHEN a_flags[c] & 4 <> 0 AND cp[c] + cpo[c] + amt > dpo[c] THEN 'exceeds_debits'
                ELSE 'created' END;
            IF r = 'created' THEN
                IF f & pending <> 0 THEN
                    dp[d] := dp[d] + amt; cp[c] := cp[c] + amt;
                    h_id := h_id || t_id[i]; h_debit := h_debit || d; h_credit := h_credit || c;
                    h_amount := h_amount || amt; h_ledger := h_ledger || t_ledger[i];
                    h_code := h_code || t_code[i]; h_state := h_state || 'pending'::text;
                    h_was := h_was || 'new'::text; h_by := h_by || NULL::uuid;
                    h_expires := h_expires || CASE WHEN t_timeout[i] > 0
                        THEN now_ + t_timeout[i] * interval '1 second' END;
                ELSE
                    dpo[d] := dpo[d] + amt; cpo[c] := cpo[c] + amt;
                END IF;
                o_debit[i] := a_id[d]; o_credit[i] := a_id[c]; o_amount[i] := amt;
                o_ledger[i] := t_ledger[i]; o_code[i] := t_code[i];
            END IF;
        END IF;
        IF chain IS NOT NULL AND i = n AND f & linked <> 0 THEN
            r := 'linked_event_chain_open';  -- the batch ends inside a chain: none of it happens
        END IF;
        res[i] := r;
        IF r = 'created' THEN
            o_at[i] := now_;
        END IF;
        IF chain IS NOT NULL AND r NOT IN ('created', 'exists') THEN
            IF NOT chain_failed THEN
                -- One failure fails the whole chain: undo what its earlier transfers did.
                chain_failed := true;
                dp := s_dp; dpo := s_dpo; cp := s_cp; cpo := s_cpo;
                h_state := s_state; h_by := s_by; h_id := h_id[1:s_holds];
                h_debit := h_debit[1:s_holds]; h_credit := h_credit[1:s_holds];
                h_amount := h_amount[1:s_holds]; h_ledger := h_ledger[1:s_holds];
                h_code := h_code[1:s_holds]; h_expires := h_expires[1:s_holds];
                h_was := h_was[1:s_holds];
                FOR j IN chain .. i - 1 LOOP
                    res[j] := 'linked_event_failed';
                END LOOP;
            END IF;
            FOR j IN chain .. i LOOP
                o_debit[j] := NULL; o_credit[j] := NULL; o_amount[j] := NULL;
                o_ledger[j] := NULL; o_code[j] := NULL; o_at[j] := NULL;
            END LOOP;
        END IF;
        IF f & linked = 0 THEN
            chain := NULL; chain_failed := false;
        END IF;
    END LOOP;

    INSERT INTO transfers (id, debit_account_id, credit_account_id, amount, pending_id, ledger,
                           code, flags, timeout_s, reference, created_at)
    SELECT x.id, x.debit, x.credit, x.amount, x.pending_id, x.ledger, x.code, x.flags,
           x.timeout_s, x.reference, now_
      FROM unnest(t_id, o_debit, o_credit, o_amount, t_pending, o_ledger, o_code, t_flags,
                  t_timeout, t_reference, res)
           WITH ORDINALITY x(id, debit, credit, amount, pending_id, ledger, code, flags,
                             timeout_s, reference, result, ord)
     WHERE x.result = 'created' ORDER BY x.ord;

    INSERT INTO holds (pending_id, expires_at)
    SELECT h.id, h.expires_at FROM unnest(h_id, h_expires, h_was) h(id, expires_at, was)
     WHERE h.was = 'new';
    UPDATE holds SET resolution = h.state, resolved_by = h.by, resolved_at = now_
      FROM unnest(h_id, h_state, h_was, h_by) h(id, state, was, by)
     WHERE holds.pending_id = h.id AND h.state <> 'pending' AND h.state IS DISTINCT FROM h.was;

    UPDATE accounts SET debits_pending = b.dp, debits_posted = b.dpo,
                        credits_pending = b.cp, credits_posted = b.cpo
      FROM unnest(a_id, dp, dpo, cp, cpo) b(id, dp, dpo, cp, cpo)
     WHERE accounts.id = b.id
       AND (accounts.debits_pending, accounts.debits_posted, accounts.credits_pending,
            accounts.credits_posted) IS DISTINCT FROM (b.dp, b.dpo, b.cp, b.cpo);

    RETURN QUERY
    SELECT * FROM unnest(res, o_debit, o_credit, o_amount, o_ledger, o_code, o_at);
END $$;
