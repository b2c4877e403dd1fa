"""The demo city's riders in transit: a pseudonym each, and a ride credential for their phone.

``cardless up`` seeds them after the migrations, as enrolment would (``handlers.enrol``): the
credential binds the phone key to the rider's pseudonym, signed by the issuer key signing now,
and is recorded in ``ride_credentials``. A credential is kept while it has more than half its
life left and renewed otherwise, under an id derived from the rider and its start, so seeding
twice in a day issues nothing new and a day later renews them all.

The credentials' bytes are kept in the data directory (``riders/credentials``, one base64url
line per rider, owner only): a phone holds its credential, and the demo's phones live there,
so ``cardless riders codes`` makes ride codes with no network, as a phone in a tunnel does.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from jwt.utils import base64url_decode, base64url_encode

from services.transit import ridecode
from services.transit.handlers import short_kid
from shared.db import Connection
from shared.keyring import Keyring

CREDENTIALS = Path("riders") / "credentials"
CATEGORY = "adult"
_IDS = uuid.UUID("a7d35c0e-2f61-4c83-9b1e-5d0c8f3e6a92")  # namespace of demo credential ids


@dataclass(frozen=True)
class Issuing:
    """What a credential is issued with: the keyring's signing key, now, and for how long."""

    keyring: Keyring
    now: datetime
    ttl_s: int


async def seed(
    conn: Connection,
    riders: Sequence[tuple[str, ridecode.PublicKey]],
    held: Sequence[bytes | None],
    issuing: Issuing,
) -> list[bytes]:
    """A valid credential for each ``(subject, phone key)``: the one it ``held`` if still good
    for half its life, else a new one; recorded in the caller's transaction, in order."""
    pseudonyms = await _pseudonyms(conn, [subject for subject, _ in riders], issuing.now)
    known = {short_kid(k.kid) for k in issuing.keyring.verification_keys()}
    credentials = []
    for (subject, phone), pseudonym, old in zip(riders, pseudonyms, held, strict=True):
        if old is not None and _still_good(old, pseudonym, phone, known, issuing):
            credentials.append(old)
        else:
            credentials.append(_issue(subject, pseudonym, phone, issuing))
    await _record(conn, [ridecode.parse_credential(c) for c in credentials], issuing.now)
    return credentials


async def _pseudonyms(conn: Connection, subjects: Sequence[str], now: datetime) -> list[bytes]:
    """Each subject's pseudonym, made where missing (as a first enrolment makes it)."""
    await conn.execute(
        "INSERT INTO riders (pseudonym, subject, created_at)"
        " SELECT r.*, $3::timestamptz FROM unnest($1::bytea[], $2::text[]) AS r"
        " ON CONFLICT (subject) DO NOTHING",
        [os.urandom(ridecode.ID_BYTES) for _ in subjects],
        list(subjects),
        now,
    )
    rows = await conn.fetch(
        "SELECT subject, pseudonym FROM riders WHERE subject = ANY($1::text[])", list(subjects)
    )
    found = {row["subject"]: bytes(row["pseudonym"]) for row in rows}
    return [found[subject] for subject in subjects]


def _still_good(
    credential: bytes,
    pseudonym: bytes,
    phone: ridecode.PublicKey,
    known_kids: set[str],
    issuing: Issuing,
) -> bool:
    try:
        parsed = ridecode.parse_credential(credential)
    except ridecode.CodeError:
        return False
    left = parsed.not_after - issuing.now.timestamp()
    return (
        parsed.rider == pseudonym
        and (parsed.key_type, parsed.device_key) == ridecode.raw_public_key(phone)
        and parsed.kid in known_kids
        and left > issuing.ttl_s / 2
    )


def _issue(subject: str, pseudonym: bytes, phone: ridecode.PublicKey, issuing: Issuing) -> bytes:
    kid, issuer_key = issuing.keyring.signing_key()
    not_before = int(issuing.now.timestamp())
    return ridecode.issue_credential(
        issuer_key=issuer_key, kid=short_kid(kid), rider=pseudonym, category=CATEGORY,
        not_before=not_before, not_after=not_before + issuing.ttl_s, device_key=phone,
        credential_id=uuid.uuid5(_IDS, f"{subject}/{not_before}").bytes,
    )  # fmt: skip


async def _record(
    conn: Connection, credentials: Sequence[ridecode.Credential], now: datetime
) -> None:
    """Record the credentials not recorded yet (kept ones are, unless the data was reset)."""
    await conn.execute(
        "INSERT INTO ride_credentials (credential_id, pseudonym, category, kid, not_before,"
        " not_after, issued_at) SELECT c.*, $7::timestamptz FROM unnest($1::bytea[],"
        " $2::bytea[], $3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[]) AS c"
        " ON CONFLICT (credential_id) DO NOTHING",
        [c.credential_id for c in credentials],
        [c.rider for c in credentials],
        [c.category for c in credentials],
        [c.kid for c in credentials],
        [datetime.fromtimestamp(c.not_before, UTC) for c in credentials],
        [datetime.fromtimestamp(c.not_after, UTC) for c in credentials],
        now,
    )


# -- the phones' copies, in the data directory -----------------------------------------------


def save(data_dir: Path, credentials: Sequence[bytes]) -> Path:
    """Keep the riders' credentials (line i: rider i's, base64url), readable by the owner only;
    replaced whole, so a reader never sees half a file."""
    path = data_dir / CREDENTIALS
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.writelines(base64url_encode(c).decode() + "\n" for c in credentials)
    partial.replace(path)
    return path


def load(data_dir: Path) -> list[bytes]:
    """The riders' credentials as last saved; none if there are none yet."""
    path = data_dir / CREDENTIALS
    if not path.exists():
        return []
    return [base64url_decode(line) for line in path.read_text().split()]


def ride_code(credential: bytes, phone: ridecode.PrivateKey, now: float) -> bytes:
    """A fresh code, as the phone shows it: the counter is the milliseconds since the
    credential began, so it grows with every code of that credential (32 bits: 49 days)."""
    parsed = ridecode.parse_credential(credential)
    counter = int(now * 1000) - parsed.not_before * 1000
    return ridecode.make_code(credential, device_key=phone, timestamp=int(now), counter=counter)
