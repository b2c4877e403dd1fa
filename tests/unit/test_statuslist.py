"""Revocation by Token Status List: the draft's own lists and token, read exactly as published."""

from __future__ import annotations

import base64
import json
import random
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from services.identity.statuslist import (
    INVALID,
    MAX_LIST_BYTES,
    SUSPENDED,
    TYP,
    VALID,
    ListToken,
    Reference,
    StatusList,
    StatusListError,
    read_token,
    status_of,
    token_claims,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "sd-jwt"
STATUS = DATA / "status-list"
URI = "https://example.com/statuslists/1"
# Inside the published token's [iat, exp]: the examples carry fixed times.
NOW = 1_700_000_000


def load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((STATUS / name).read_text(encoding="utf-8"))
    return document


LISTS = load("status-lists.json")["lists"]
TOKEN_FILE = load("status-list-token-jwt.json")
TOKEN = TOKEN_FILE["http_response"]["body"]
REFERENCED = load("referenced-token-revoked.json")
KEYS = json.loads((DATA / "keys.json").read_text(encoding="utf-8"))["keys"]
KID_12 = KEYS["tsl-status-issuer"]["private_jwk"]


def public_key(jwk: Mapping[str, Any]) -> Any:
    public = {name: jwk[name] for name in ("kty", "crv", "x", "y")}
    return jwt.PyJWK(public, "ES256").key


def kid_12(header: Mapping[str, Any]) -> tuple[Any, str] | None:
    """The resolver a verifier configured with the draft's status issuer would have."""
    return (public_key(KID_12), "ES256") if header.get("kid") == "12" else None


def no_keys(header: Mapping[str, Any]) -> tuple[Any, str] | None:
    return None


def read(token: str = TOKEN, *, uri: str = URI, now: int = NOW, keys: Any = kid_12) -> ListToken:
    return read_token(token, keys=keys, uri=uri, now=now)


def reason(token: str = TOKEN, **changes: Any) -> str:
    with pytest.raises(StatusListError) as refused:
        read(token, **changes)
    return refused.value.reason


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_json(document: Mapping[str, Any]) -> str:
    return b64url(json.dumps(document, separators=(",", ":")).encode())


def statuses_by_index(listed: Mapping[str, Any]) -> dict[int, int]:
    """The non-zero statuses a published list holds, as the test data lists them."""
    if "status_by_index" in listed:
        return {i: s for i, s in enumerate(listed["status_by_index"]) if s}
    return {int(index): status for index, status in listed["nonzero_statuses"].items()}


def nonzero(status_list: StatusList) -> dict[int, int]:
    """Every non-zero status, read through ``[]``; entries in a zero byte are all VALID."""
    per_byte = 8 // status_list.bits
    found = {}
    for byte_index, byte in enumerate(status_list.to_bytes()):
        for index in range(byte_index * per_byte, (byte_index + 1) * per_byte):
            if byte and status_list[index]:
                found[index] = status_list[index]
    return found


# -- the encoding -------------------------------------------------------------------------


@pytest.mark.parametrize("listed", LISTS, ids=[listed["id"] for listed in LISTS])
def test_every_published_list_decodes_to_exactly_its_listed_statuses(
    listed: dict[str, Any],
) -> None:
    status_list = StatusList.decode({"bits": listed["bits"], "lst": listed["lst"]})

    assert (status_list.size, status_list.bits) == (listed["size"], listed["bits"])
    assert nonzero(status_list) == statuses_by_index(listed)
    if "status_by_index" in listed:
        assert list(status_list) == listed["status_by_index"]
        assert status_list.to_bytes().hex() == listed["uncompressed_hex"]


@pytest.mark.parametrize("listed", LISTS, ids=[listed["id"] for listed in LISTS])
def test_every_published_list_survives_encode_then_decode(listed: dict[str, Any]) -> None:
    status_list = StatusList.decode({"bits": listed["bits"], "lst": listed["lst"]})

    again = StatusList.decode(status_list.encode())

    assert again == status_list
    assert again.encode()["bits"] == listed["bits"]


def test_the_first_published_list_reads_as_the_draft_says() -> None:
    status_list = StatusList.decode({"bits": 1, "lst": "eNrbuRgAAhcBXQ"})

    assert (status_list[0], status_list[1], status_list[3]) == (INVALID, VALID, INVALID)


@st.composite
def statuses(draw: st.DrawFn) -> tuple[int, list[int]]:
    """A width and that many-bit statuses for a list of any size up to a few hundred."""
    bits = draw(st.sampled_from((1, 2, 4, 8)))
    return bits, draw(st.lists(st.integers(0, (1 << bits) - 1), max_size=300))


@given(statuses())
def test_any_statuses_survive_encode_then_decode(case: tuple[int, list[int]]) -> None:
    bits, statuses = case
    status_list = StatusList(len(statuses), bits)
    for index, status in enumerate(statuses):
        status_list[index] = status

    again = StatusList.decode(status_list.encode())

    # The encoding carries bytes, not a count: a size that fills no whole byte comes back
    # rounded up to the byte, the spare entries VALID.
    assert again.bits == bits
    assert again.to_bytes() == status_list.to_bytes()
    assert list(again)[: len(statuses)] == statuses
    assert set(list(again)[len(statuses) :]) <= {VALID}
    assert again.size == len(status_list.to_bytes()) * 8 // bits


def test_a_million_entry_list_with_thousands_revoked_stays_small() -> None:
    chosen = random.Random(20260420)
    status_list = StatusList(1_048_576, bits=2)
    revoked = {chosen.randrange(status_list.size): chosen.choice((1, 2, 3)) for _ in range(3000)}
    for index, status in revoked.items():
        status_list[index] = status

    encoded = status_list.encode()
    again = StatusList.decode(encoded)

    assert len(encoded["lst"]) < 32 * 1024  # well under the 64 KiB a token may reasonably be
    assert again.size == 1_048_576
    assert nonzero(again) == revoked


def test_setting_a_status_changes_only_that_entry() -> None:
    status_list = StatusList(12, bits=2, data=bytes.fromhex("c944f9"))

    status_list[5] = SUSPENDED

    expected = [1, 2, 0, 3, 0, 2, 0, 1, 1, 2, 3, 3]
    assert list(status_list) == expected


@pytest.mark.parametrize(("bits", "status"), [(1, 2), (2, 4), (4, 16), (8, 256), (2, -1)])
def test_a_status_that_does_not_fit_its_bits_is_refused(bits: int, status: int) -> None:
    status_list = StatusList(8, bits)

    with pytest.raises(ValueError, match="does not fit"):
        status_list[0] = status


@pytest.mark.parametrize("index", [-1, 16, 17, 10**9])
def test_an_index_outside_the_list_is_out_of_range(index: int) -> None:
    status_list = StatusList.decode({"bits": 1, "lst": "eNrbuRgAAhcBXQ"})

    with pytest.raises(StatusListError) as refused:
        status_list[index]

    assert refused.value.reason == "out_of_range"


def test_a_list_is_built_only_from_the_bytes_its_size_takes() -> None:
    with pytest.raises(ValueError, match="take 3 bytes"):
        StatusList(12, bits=2, data=b"\x00\x00")
    with pytest.raises(ValueError, match="bits must be"):
        StatusList(8, bits=3)


def deflated(data: bytes) -> str:
    return b64url(zlib.compress(data))


@pytest.mark.parametrize(
    "claim",
    [
        {"bits": 3, "lst": deflated(b"\x01")},
        {"bits": True, "lst": deflated(b"\x01")},
        {"bits": "1", "lst": deflated(b"\x01")},
        {"lst": deflated(b"\x01")},
        {"bits": 1},
        {"bits": 1, "lst": 42},
        {"bits": 1, "lst": deflated(b"\x01") + "="},  # padding: base64url here has none
        {"bits": 1, "lst": "eNrb+RgAAhcBXQ"},  # the standard alphabet, not base64url
        {"bits": 1, "lst": "eNrb/RgAAhcBXQ"},
        {"bits": 1, "lst": "eNrb uRgAAhcBXQ"},
        {"bits": 1, "lst": "eNrbuRgAAhcBX"},  # cut short
        {"bits": 1, "lst": b64url(b"not zlib")},
        {"bits": 1, "lst": b64url(zlib.compress(b"\x01") + b"\x00")},  # trailing bytes
        {"bits": 1, "lst": b64url(zlib.compress(b"\x01")[:-3])},  # truncated stream
    ],
    ids=repr,
)
def test_a_malformed_status_list_claim_is_refused(claim: dict[str, Any]) -> None:
    with pytest.raises(StatusListError) as refused:
        StatusList.decode(claim)

    assert refused.value.reason == "malformed"


def test_a_list_that_inflates_past_the_limit_is_refused_as_malformed() -> None:
    bomb = b64url(zlib.compress(bytes(MAX_LIST_BYTES + 1), 9))  # a few kB that inflate to 16 MiB

    with pytest.raises(StatusListError) as refused:
        StatusList.decode({"bits": 8, "lst": bomb})

    assert refused.value.reason == "malformed"


# -- the Status List Token ----------------------------------------------------------------


def test_the_published_token_verifies_and_gives_its_listed_statuses() -> None:
    token = read()

    assert token.uri == URI
    assert (token.iat, token.exp, token.ttl) == (1686920170, 2291720170, 43200)
    assert list(token.status_list) == TOKEN_FILE["expected"]["status_by_index"]


@pytest.mark.parametrize("now", [1686920170, 2291720170 - 1])
def test_the_published_token_is_valid_from_its_iat_to_its_exp(now: int) -> None:
    assert read(now=now).uri == URI


def test_the_published_token_has_expired_after_its_exp() -> None:
    assert reason(now=2291720170 + 61) == "expired"


def test_the_published_token_is_not_yet_valid_long_before_its_iat() -> None:
    assert reason(now=1686920170 - 61) == "not_yet_valid"


def test_the_published_token_is_the_wrong_list_for_another_uri() -> None:
    assert reason(uri="https://example.com/statuslists/2") == "wrong_list"


def test_a_token_whose_payload_was_changed_fails_its_signature() -> None:
    header, _, signature = TOKEN.split(".")
    payload = {**TOKEN_FILE["payload"], "status_list": StatusList(16, bits=1).encode()}

    assert reason(f"{header}.{b64url_json(payload)}.{signature}") == "signature"


def test_a_token_with_one_payload_character_changed_fails_its_signature() -> None:
    header, payload, signature = TOKEN.split(".")
    changed = payload[:40] + ("A" if payload[40] != "A" else "B") + payload[41:]

    assert reason(f"{header}.{changed}.{signature}") == "signature"


def test_a_token_from_an_issuer_we_know_no_key_for_is_unknown_key() -> None:
    assert reason(keys=no_keys) == "unknown_key"


def test_a_token_signed_with_another_algorithm_than_the_pinned_one_fails_its_signature() -> None:
    def pinned_to_eddsa(header: Mapping[str, Any]) -> tuple[Any, str] | None:
        return public_key(KID_12), "EdDSA"

    assert reason(keys=pinned_to_eddsa) == "signature"


def sign(
    claims: Mapping[str, Any], *, typ: str = TYP, key: Any = None, algorithm: str = "ES256"
) -> str:
    signer = jwt.PyJWK(KID_12).key if key is None else key
    headers = {"kid": "12", "typ": typ}
    return jwt.encode(dict(claims), signer, algorithm=algorithm, headers=headers)


def test_a_token_of_another_type_is_malformed_even_when_signed() -> None:
    assert reason(sign(TOKEN_FILE["payload"], typ="JWT")) == "malformed"


@pytest.mark.parametrize(
    "changes",
    [
        {"sub": None},
        {"iat": None},
        {"status_list": None},
        {"status_list": {"bits": 1}},
        {"status_list": "eNrbuRgAAhcBXQ"},
        {"exp": "2291720170"},
        {"exp": True},
        {"iat": float("nan")},
        {"ttl": -1},
        {"ttl": "43200"},
        {"sub": 1},
    ],
    ids=repr,
)
def test_a_signed_token_with_a_malformed_claim_is_malformed(changes: dict[str, Any]) -> None:
    claims = {**TOKEN_FILE["payload"], **changes}
    signed = sign({name: value for name, value in claims.items() if value is not None})

    assert reason(signed) == "malformed"


@pytest.mark.parametrize(
    "token", ["", "not a token", "a.b.c", "é.b.c", TOKEN.rsplit(".", 1)[0]], ids=repr
)
def test_something_that_is_not_a_token_is_malformed(token: str) -> None:
    assert reason(token) == "malformed"


def test_a_token_without_exp_or_ttl_is_read_without_them() -> None:
    claims = {
        name: value for name, value in TOKEN_FILE["payload"].items() if name not in ("exp", "ttl")
    }

    token = read(sign(claims), now=3_000_000_000)

    assert (token.exp, token.ttl) == (None, None)


@pytest.mark.parametrize("curve", ["P-256", "Ed25519"])
def test_a_list_the_service_signs_reads_back_with_its_statuses(curve: str) -> None:
    status_list = StatusList(1000, bits=2)
    status_list[7], status_list[999] = INVALID, SUSPENDED
    claims = token_claims(
        status_list, uri=URI, issuer="https://id.cardless.dev", iat=NOW, exp=NOW + 86400, ttl=3600
    )
    if curve == "P-256":
        private: Any = ec.generate_private_key(ec.SECP256R1())
        algorithm = "ES256"
    else:
        private = Ed25519PrivateKey.generate()
        algorithm = "EdDSA"
    signed = sign(claims, key=private, algorithm=algorithm)

    token = read(signed, keys=lambda header: (private.public_key(), algorithm))

    assert (token.uri, token.iat, token.exp, token.ttl) == (URI, NOW, NOW + 86400, 3600)
    assert token.status_list[7] == INVALID
    assert token.status_list[999] == SUSPENDED
    assert token.status_list[998] == VALID


# -- the referenced token -----------------------------------------------------------------


def referenced_status_claim() -> Any:
    # Only the status claim is read here; the credential's signature is tested elsewhere.
    issuer_signed = REFERENCED["sd_jwt_issuance"].split("~")[0]
    payload = jwt.decode(issuer_signed, options={"verify_signature": False})
    return payload["status"]


def test_the_published_referenced_token_is_revoked() -> None:
    reference = Reference.from_claim(referenced_status_claim())

    assert reference == Reference(URI, 0)
    assert status_of(read(), reference) == INVALID


def test_a_reference_past_the_end_of_the_list_is_out_of_range() -> None:
    with pytest.raises(StatusListError) as refused:
        status_of(read(), Reference(URI, 16))

    assert refused.value.reason == "out_of_range"


def test_a_reference_into_another_list_is_the_wrong_list() -> None:
    with pytest.raises(StatusListError) as refused:
        status_of(read(), Reference("https://example.com/statuslists/2", 1))

    assert refused.value.reason == "wrong_list"


@pytest.mark.parametrize(
    "claim",
    [
        None,
        "https://example.com/statuslists/1",
        {},
        {"status_list": None},
        {"status_list": {"uri": URI}},
        {"status_list": {"idx": 0}},
        {"status_list": {"idx": -1, "uri": URI}},
        {"status_list": {"idx": "0", "uri": URI}},
        {"status_list": {"idx": 0.0, "uri": URI}},
        {"status_list": {"idx": False, "uri": URI}},
        {"status_list": {"idx": 0, "uri": ""}},
        {"status_list": {"idx": 0, "uri": 1}},
    ],
    ids=repr,
)
def test_a_malformed_status_claim_is_malformed(claim: Any) -> None:
    with pytest.raises(StatusListError) as refused:
        Reference.from_claim(claim)

    assert refused.value.reason == "malformed"
