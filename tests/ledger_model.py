"""A model ledger: the same semantics as the database's, written plainly, as the test oracle.

It applies batches one transfer at a time in Python dictionaries. Holds never expire here:
tests that use it give holds no timeout (expiry is tested against the database alone).
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass, field, replace

from services.wallet.ledger import (
    MAX_AMOUNT,
    Account,
    AccountFlags,
    Result,
    Transfer,
    TransferFlags,
    invalid,
)

F = TransferFlags


@dataclass
class Model:
    accounts: dict[uuid.UUID, Account] = field(default_factory=dict)
    transfers: dict[uuid.UUID, Transfer] = field(default_factory=dict)
    holds: dict[uuid.UUID, str] = field(default_factory=dict)  # pending id -> state

    def open(self, account: Account) -> None:
        self.accounts.setdefault(account.id, account)

    def apply(self, batch: list[Transfer]) -> list[Result]:
        results: list[Result] = []
        chain: int | None = None
        saved: tuple[dict[uuid.UUID, Account], dict[uuid.UUID, Transfer], dict[uuid.UUID, str]]
        failed = False
        for i, t in enumerate(batch):
            if chain is None and t.flags & F.LINKED:
                chain, failed = i, False
                saved = copy.copy(self.accounts), copy.copy(self.transfers), copy.copy(self.holds)
            result = Result.LINKED_EVENT_FAILED if failed else self._one(t)
            if chain is not None and i == len(batch) - 1 and t.flags & F.LINKED:
                result = Result.LINKED_EVENT_CHAIN_OPEN
            results.append(result)
            if chain is not None and not result.ok and not failed:
                failed = True
                self.accounts, self.transfers, self.holds = saved
                results[chain:i] = [Result.LINKED_EVENT_FAILED] * (i - chain)
            if not t.flags & F.LINKED:
                chain, failed = None, False
        return results

    def _one(self, t: Transfer) -> Result:
        static = invalid(t)
        if static is not None:
            return static
        if t.id in self.transfers:
            return self._exists(t, self.transfers[t.id])
        if t.resolves_hold:
            return self._resolve(t)
        return self._move(t)

    def _exists(self, t: Transfer, x: Transfer) -> Result:
        differs = [
            (x.flags != t.flags, Result.EXISTS_WITH_DIFFERENT_FLAGS),
            (x.pending_id != t.pending_id, Result.EXISTS_WITH_DIFFERENT_PENDING_ID),
            (x.timeout_s != t.timeout_s, Result.EXISTS_WITH_DIFFERENT_TIMEOUT),
            (
                t.debit_account_id is not None and x.debit_account_id != t.debit_account_id,
                Result.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID,
            ),
            (
                t.credit_account_id is not None and x.credit_account_id != t.credit_account_id,
                Result.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID,
            ),
            (t.amount != 0 and x.amount != t.amount, Result.EXISTS_WITH_DIFFERENT_AMOUNT),
            (t.ledger != 0 and x.ledger != t.ledger, Result.EXISTS_WITH_DIFFERENT_LEDGER),
            (t.code != 0 and x.code != t.code, Result.EXISTS_WITH_DIFFERENT_CODE),
            (x.reference != t.reference, Result.EXISTS_WITH_DIFFERENT_REFERENCE),
        ]
        return next((r for bad, r in differs if bad), Result.EXISTS)

    def _move(self, t: Transfer) -> Result:
        assert t.debit_account_id is not None
        assert t.credit_account_id is not None
        d, c = self.accounts.get(t.debit_account_id), self.accounts.get(t.credit_account_id)
        if d is None:
            return Result.DEBIT_ACCOUNT_NOT_FOUND
        if c is None:
            return Result.CREDIT_ACCOUNT_NOT_FOUND
        pending, amount = bool(t.flags & F.PENDING), t.amount
        checks = [
            (d.ledger != c.ledger, Result.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER),
            (t.ledger != d.ledger, Result.TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS),
            (bool(d.flags & AccountFlags.CLOSED), Result.DEBIT_ACCOUNT_ALREADY_CLOSED),
            (bool(c.flags & AccountFlags.CLOSED), Result.CREDIT_ACCOUNT_ALREADY_CLOSED),
            (pending and amount > MAX_AMOUNT - d.debits_pending, Result.OVERFLOWS_DEBITS_PENDING),
            (pending and amount > MAX_AMOUNT - c.credits_pending, Result.OVERFLOWS_CREDITS_PENDING),
            (not pending and amount > MAX_AMOUNT - d.debits_posted, Result.OVERFLOWS_DEBITS_POSTED),
            (
                not pending and amount > MAX_AMOUNT - c.credits_posted,
                Result.OVERFLOWS_CREDITS_POSTED,
            ),
            (amount > MAX_AMOUNT - d.debits_pending - d.debits_posted, Result.OVERFLOWS_DEBITS),
            (amount > MAX_AMOUNT - c.credits_pending - c.credits_posted, Result.OVERFLOWS_CREDITS),
            (
                bool(d.flags & AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
                and d.debits_pending + d.debits_posted + amount > d.credits_posted,
                Result.EXCEEDS_CREDITS,
            ),
            (
                bool(c.flags & AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)
                and c.credits_pending + c.credits_posted + amount > c.debits_posted,
                Result.EXCEEDS_DEBITS,
            ),
        ]
        failure = next((r for bad, r in checks if bad), None)
        if failure is not None:
            return failure
        if pending:
            self._set(d, debits_pending=d.debits_pending + amount)
            self._set(c, credits_pending=c.credits_pending + amount)
            self.holds[t.id] = "pending"
        else:
            self._set(d, debits_posted=d.debits_posted + amount)
            self._set(c, credits_posted=c.credits_posted + amount)
        self.transfers[t.id] = t
        return Result.CREATED

    def _resolve(self, t: Transfer) -> Result:
        assert t.pending_id is not None
        p = self.transfers.get(t.pending_id)
        if p is None:
            return Result.PENDING_TRANSFER_NOT_FOUND
        if t.pending_id not in self.holds:
            return Result.PENDING_TRANSFER_NOT_PENDING
        assert p.debit_account_id is not None
        assert p.credit_account_id is not None
        void = bool(t.flags & F.VOID_PENDING_TRANSFER)
        amount = p.amount if void or t.amount == 0 else t.amount
        d, c = self.accounts[p.debit_account_id], self.accounts[p.credit_account_id]
        state = self.holds[t.pending_id]
        checks = [
            (
                t.debit_account_id is not None and t.debit_account_id != d.id,
                Result.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID,
            ),
            (
                t.credit_account_id is not None and t.credit_account_id != c.id,
                Result.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID,
            ),
            (t.ledger != 0 and t.ledger != p.ledger, Result.PENDING_TRANSFER_HAS_DIFFERENT_LEDGER),
            (t.code != 0 and t.code != p.code, Result.PENDING_TRANSFER_HAS_DIFFERENT_CODE),
            (amount > p.amount, Result.EXCEEDS_PENDING_TRANSFER_AMOUNT),
            (
                void and t.amount not in (0, p.amount),
                Result.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT,
            ),
            (state == "posted", Result.PENDING_TRANSFER_ALREADY_POSTED),
            (state == "voided", Result.PENDING_TRANSFER_ALREADY_VOIDED),
            (state == "expired", Result.PENDING_TRANSFER_EXPIRED),
            (not void and amount > MAX_AMOUNT - d.debits_posted, Result.OVERFLOWS_DEBITS_POSTED),
            (not void and amount > MAX_AMOUNT - c.credits_posted, Result.OVERFLOWS_CREDITS_POSTED),
        ]
        failure = next((r for bad, r in checks if bad), None)
        if failure is not None:
            return failure
        posted = 0 if void else amount
        self._set(d, debits_pending=d.debits_pending - p.amount)
        self._set(self.accounts[c.id], credits_pending=c.credits_pending - p.amount)
        d, c = self.accounts[d.id], self.accounts[c.id]
        self._set(d, debits_posted=d.debits_posted + posted)
        self._set(c, credits_posted=c.credits_posted + posted)
        self.holds[t.pending_id] = "voided" if void else "posted"
        self.transfers[t.id] = replace(
            t,
            debit_account_id=d.id,
            credit_account_id=c.id,
            amount=amount,
            ledger=p.ledger,
            code=p.code,
        )
        return Result.CREATED

    def _set(self, account: Account, **balances: int) -> None:
        self.accounts[account.id] = replace(self.accounts[account.id], **balances)
