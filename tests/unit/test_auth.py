"""Access tokens: only what the gateway signed, for us, in time, with the key's own algorithm."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import example, given
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm, get_default_algorithms

from shared.auth import (
    MAX_TOKEN_CHARS,
    JwksError,
    Principal,
    StaticKeys,
    TokenVerifier,
    Unauthenticated,
    VerificationKey,
    parse_jwks,
)
from shared.config import AuthConfig, ConfigError, PlatformConfig

NOW = datetime(2030, 1, 1, 8, 30, tzinfo=UTC)
ISSUER, AUDIENCE = "cardless-gateway", "cardless-internal"
SERVERS = {
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/postgres",
}


@dataclass(frozen=True)
class FixedClock:
    at: datetime

    def now(self) -> datetime:
        return self.at


class Gateway:
    """The gateway's stand-in: a signing key with its kid, and the public JWK it publishes."""

    def __init__(self, kid: str, curve: str) -> None:
        self.kid = kid
        if curve == "Ed25519":
            self.private: Any = Ed25519PrivateKey.generate()
            self.algorithm = "EdDSA"
        else:
            self.private = ec.generate_private_key(ec.SECP256R1())
            self.algorithm = "ES256"

    def jwk(self) -> dict[str, Any]:
        exporter = get_default_algorithms()[self.algorithm]
        return {**exporter.to_jwk(self.private.public_key(), as_dict=True), "kid": self.kid}

    def claims(self, **changes: Any) -> dict[str, Any]:
        """Good claims for NOW; a change of None leaves that claim out."""
        good = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "rider-7f3a",
            "scope": "rides:read wallet:pay",
            "client_id": "cardless-app",
            "iat": int(NOW.timestamp()) - 60,
            "exp": int(NOW.timestamp()) + 240,
        }
        return {k: v for k, v in {**good, **changes}.items() if v is not None}

    def mint(self, *, headers: dict[str, Any] | None = None, **changes: Any) -> str:
        headers = {"kid": self.kid, **(headers or {})}
        return jwt.encode(self.claims(**changes), self.private, self.algorithm, headers=headers)


ED, EC = Gateway("ed-2030-01", "Ed25519"), Gateway("ec-2030-01", "P-256")


def jwks(*gateways: Gateway) -> str:
    return json.dumps({"keys": [g.jwk() for g in gateways]})


def verifier(*gateways: Gateway, at: datetime = NOW) -> TokenVerifier:
    keys = parse_jwks(jwks(*(gateways or (ED, EC))))
    return TokenVerifier(AuthConfig(ISSUER, AUDIENCE, keys, leeway_s=30), FixedClock(at))


async def refusal(token: str, checker: TokenVerifier | None = None) -> str:
    with pytest.raises(Unauthenticated) as refused:
        await (checker or verifier()).verify(token)
    return refused.value.reason


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    """A token built without pyjwt, for the shapes pyjwt refuses to make."""
    return ".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), b64(signature)]
    )


@pytest.mark.parametrize("gateway", [ED, EC], ids=["EdDSA", "ES256"])
async def test_a_good_token_names_the_principal_and_its_scopes(gateway: Gateway) -> None:
    assert await verifier().verify(gateway.mint()) == Principal(
        subject="rider-7f3a",
        scopes=frozenset({"rides:read", "wallet:pay"}),
        client_id="cardless-app",
    )


async def test_a_token_without_scope_or_client_id_names_a_principal_with_neither() -> None:
    principal = await verifier().verify(ED.mint(scope=None, client_id=None))
    assert principal == Principal("rider-7f3a", frozenset(), None)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"exp": int(NOW.timestamp()) - 31}, "token expired"),
        ({"nbf": int(NOW.timestamp()) + 31}, "token not yet valid"),
        ({"iat": int(NOW.timestamp()) + 31}, "token issued in the future"),
        ({"iss": "someone-else"}, "wrong issuer"),
        ({"aud": "another-city"}, "wrong audience"),
        ({"aud": ["another-city", "elsewhere"]}, "wrong audience"),
        ({"exp": None}, "missing exp"),
        ({"iat": None}, "missing iat"),
        ({"iss": None}, "missing iss"),
        ({"aud": None}, "missing aud"),
        ({"sub": None}, "missing sub"),
        ({"sub": ""}, "missing sub"),
        ({"exp": float("inf")}, "malformed exp"),
        ({"exp": float("nan")}, "malformed exp"),
        ({"exp": "2030-01-01T09:00:00Z"}, "malformed exp"),
        ({"iat": True}, "malformed iat"),
        ({"scope": ["rides:read"]}, "malformed scope or client_id"),
        ({"client_id": 7}, "malformed scope or client_id"),
    ],
)
async def test_a_token_with_bad_claims_is_refused_for_that_reason(
    changes: dict[str, Any], reason: str
) -> None:
    assert await refusal(ED.mint(**changes)) == reason


@pytest.mark.parametrize(
    "changes",
    [
        {"exp": int(NOW.timestamp()) - 29},
        {"nbf": int(NOW.timestamp()) + 29},
        {"iat": int(NOW.timestamp()) + 29},
        {"aud": ["another-city", AUDIENCE]},
    ],
    ids=["expired-within-leeway", "nbf-within-leeway", "iat-within-leeway", "aud-list"],
)
async def test_clock_skew_within_the_leeway_and_an_audience_list_naming_us_are_accepted(
    changes: dict[str, Any],
) -> None:
    assert (await verifier().verify(ED.mint(**changes))).subject == "rider-7f3a"


async def test_the_verifiers_clock_decides_expiry_not_the_wall_clock() -> None:
    token = ED.mint()
    late = verifier(at=NOW + timedelta(seconds=260))
    assert (await late.verify(token)).subject == "rider-7f3a"
    assert await refusal(token, verifier(at=NOW + timedelta(seconds=300))) == "token expired"


async def test_alg_none_is_refused_with_or_without_a_kid() -> None:
    claims = ED.claims()
    assert await refusal(hand_made({"alg": "none", "kid": ED.kid}, claims)) == (
        "algorithm not allowed for this key"
    )
    assert await refusal(hand_made({"alg": "none"}, claims)) == "missing kid"


@pytest.mark.parametrize("gateway", [ED, EC], ids=["Ed25519", "P-256"])
async def test_hs256_signed_with_the_public_key_as_secret_is_refused(gateway: Gateway) -> None:
    # The classic confusion attack: the public key is public, so an attacker can HMAC with it.
    public = gateway.private.public_key()
    for secret in (
        public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
        json.dumps(gateway.jwk()).encode(),
    ):
        header, claims = {"alg": "HS256", "kid": gateway.kid, "typ": "JWT"}, gateway.claims()
        signing_input = hand_made(header, claims).rsplit(".", 1)[0].encode()
        mac = hmac.new(secret, signing_input, hashlib.sha256).digest()
        assert await refusal(hand_made(header, claims, mac)) == "algorithm not allowed for this key"


async def test_a_token_whose_alg_differs_from_the_keys_is_refused() -> None:
    es256_on_ed_kid = jwt.encode(ED.claims(), EC.private, "ES256", headers={"kid": ED.kid})
    assert await refusal(es256_on_ed_kid) == "algorithm not allowed for this key"


async def test_a_token_signed_by_another_key_under_our_kid_is_refused() -> None:
    impostor = Gateway(ED.kid, "Ed25519")
    assert await refusal(impostor.mint()) == "bad signature"
    # Nor does a key the token carries itself count (the embedded-jwk attack, CVE-2018-0114).
    own_key = {"jwk": impostor.jwk(), "jku": "https://attacker.example/jwks.json"}
    assert await refusal(impostor.mint(headers=own_key)) == "bad signature"


async def test_a_token_whose_claims_were_changed_after_signing_is_refused() -> None:
    header, _, signature = ED.mint().split(".")
    forged = b64(json.dumps(ED.claims(scope="admin")).encode())
    assert await refusal(f"{header}.{forged}.{signature}") == "bad signature"


async def test_a_token_with_an_unknown_or_missing_kid_is_refused() -> None:
    assert await refusal(ED.mint(headers={"kid": "ed-1999-01"})) == "unknown kid"
    no_kid = jwt.encode(ED.claims(), ED.private, "EdDSA")
    assert await refusal(no_kid) == "missing kid"


async def test_a_token_with_an_unknown_critical_header_is_refused() -> None:
    assert await refusal(ED.mint(headers={"crit": ["exp"], "exp": 1})) == "malformed token"


async def test_an_oversized_token_is_refused_before_it_is_parsed() -> None:
    token = ED.mint(padding="x" * MAX_TOKEN_CHARS)
    assert await refusal(token) == "token too large"


async def test_without_keys_every_token_is_refused() -> None:
    empty = TokenVerifier(AuthConfig(), FixedClock(NOW))
    assert not empty.configured
    assert await refusal(ED.mint(), empty) == "authentication is not configured"


async def test_during_rotation_tokens_of_the_old_and_the_new_key_are_both_accepted() -> None:
    old, new = Gateway("ed-2029-12", "Ed25519"), Gateway("ed-2030-01", "Ed25519")
    both = verifier(old, new)
    assert (await both.verify(old.mint())).subject == "rider-7f3a"
    assert (await both.verify(new.mint())).subject == "rider-7f3a"
    assert await refusal(old.mint(), verifier(new)) == "unknown kid"


async def test_the_gateway_swaps_in_its_rotated_keys_and_they_take_effect_at_once() -> None:
    old, new = Gateway("ed-2029-12", "Ed25519"), Gateway("ed-2030-01", "Ed25519")
    own = StaticKeys(parse_jwks(jwks(old)))
    checker = TokenVerifier(AuthConfig(ISSUER, AUDIENCE), FixedClock(NOW), own)
    assert (await checker.verify(old.mint())).subject == "rider-7f3a"
    own.replace(parse_jwks(jwks(new)))
    assert (await checker.verify(new.mint())).subject == "rider-7f3a"
    assert await refusal(old.mint(), checker) == "unknown kid"
    with pytest.raises(JwksError, match="two keys share a kid"):
        own.replace([*parse_jwks(jwks(new)), *parse_jwks(jwks(new))])


async def test_claims_gives_every_claim_of_a_good_token_and_refuses_a_bad_one_alike() -> None:
    # The gateway reads claims a Principal does not carry, such as the key binding (cnf).
    binding = {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}
    claims = await verifier().claims(ED.mint(cnf=binding))
    assert claims == ED.claims(cnf=binding)
    with pytest.raises(Unauthenticated) as refused:
        await verifier().claims(ED.mint(aud="cardless"))
    assert refused.value.reason == "wrong audience"


def test_a_verifier_for_a_jwks_url_needs_its_remote_key_source() -> None:
    config = AuthConfig(jwks_url="https://gateway.cardless.example/.well-known/jwks.json")
    with pytest.raises(ValueError, match="AUTH_JWKS_URL"):
        TokenVerifier(config, FixedClock(NOW))
    assert TokenVerifier(config, FixedClock(NOW), StaticKeys([])).configured


async def test_a_refusal_is_logged_with_its_reason_and_kid_but_never_the_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    token = ED.mint(sub="rider-secret-subject", exp=int(NOW.timestamp()) - 3600)
    with caplog.at_level(logging.INFO, logger="shared.auth"):
        await refusal(token)
    [record] = caplog.records
    assert record.levelno == logging.INFO
    assert (record.__dict__["reason"], record.__dict__["kid"]) == ("token expired", ED.kid)
    assert token not in caplog.text
    assert "rider-secret-subject" not in caplog.text


# Surrogates included: aiohttp hands undecodable header bytes over as lone surrogates.
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=300)
SEGMENT = st.binary(max_size=120).map(b64)
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
HEADER = st.fixed_dictionaries(
    {},
    optional={
        "alg": st.sampled_from(["EdDSA", "ES256", "HS256", "none", "RS256"]) | JSON_VALUE,
        "kid": st.sampled_from([ED.kid, EC.kid, "other"]) | JSON_VALUE,
        "crit": JSON_VALUE,
        "b64": JSON_VALUE,
    },
)
CLAIMS = st.dictionaries(
    st.sampled_from(["iss", "aud", "sub", "exp", "iat", "nbf", "scope", "client_id"]), JSON_VALUE
)


@given(ANY_TEXT)
@example("\udcff\udcfe.e30.")
async def test_any_string_is_refused_with_our_exception_only(text: str) -> None:
    await refusal(text)


@given(HEADER, CLAIMS | JSON_VALUE, SEGMENT)
async def test_any_token_shaped_string_is_refused_with_our_exception_only(
    header: dict[str, Any], claims: Any, signature: str
) -> None:
    token = ".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), signature]
    )
    await refusal(token)


@given(CLAIMS | JSON_VALUE)
@example({**ED.claims(), "exp": 10**400})
@example({**ED.claims(), "iat": -(10**400)})
async def test_any_claims_under_a_good_signature_give_a_principal_or_our_exception(
    claims: Any,
) -> None:
    # Signed as raw JWS: pyjwt's encoder would refuse some of these shapes before signing.
    payload = json.dumps(claims).encode()
    token = jwt.PyJWS().encode(payload, ED.private, "EdDSA", headers={"kid": ED.kid})
    try:
        principal = await verifier().verify(token)
    except Unauthenticated:
        return
    assert principal.subject == claims["sub"]


def test_the_jwks_pins_each_key_to_its_algorithm() -> None:
    keys = parse_jwks(jwks(ED, EC))
    assert [(k.kid, k.algorithm) for k in keys] == [(ED.kid, "EdDSA"), (EC.kid, "ES256")]
    assert all(isinstance(k, VerificationKey) for k in keys)


def test_auth_settings_default_to_no_keys_the_internal_audience_and_a_30s_leeway() -> None:
    assert PlatformConfig.from_env("wallet", SERVERS).auth == AuthConfig(
        issuer="cardless-gateway",
        audience="cardless-internal",
        jwks=(),
        leeway_s=30,
        jwks_url=None,
        jwks_refresh_s=30,
    )


def test_auth_settings_come_from_the_environment_with_the_jwks_inline() -> None:
    auth = PlatformConfig.from_env(
        "wallet",
        {
            **SERVERS,
            "AUTH_ISSUER": "https://gateway.cardless.example",
            "AUTH_AUDIENCE": "wallet",
            "AUTH_JWKS": jwks(ED, EC),
            "AUTH_LEEWAY_S": "5",
        },
    ).auth
    assert (auth.issuer, auth.audience, auth.leeway_s) == (
        "https://gateway.cardless.example",
        "wallet",
        5,
    )
    assert [k.kid for k in auth.jwks] == [ED.kid, EC.kid]


def test_the_jwks_can_instead_be_fetched_from_a_url_with_its_refresh_interval() -> None:
    url = "https://gateway.cardless.example/.well-known/jwks.json"
    auth = PlatformConfig.from_env(
        "wallet", {**SERVERS, "AUTH_JWKS_URL": url, "AUTH_JWKS_REFRESH_S": "10"}
    ).auth
    assert (auth.jwks_url, auth.jwks_refresh_s, auth.jwks) == (url, 10, ())


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"AUTH_JWKS_URL": "https://gw.example/jwks.json", "AUTH_JWKS": jwks(ED)},
            "AUTH_JWKS, AUTH_JWKS_URL: set one of them, not both",
        ),
        (
            {"AUTH_JWKS_URL": "https://gw.example/jwks.json", "AUTH_JWKS": '{"keys": []}'},
            "AUTH_JWKS, AUTH_JWKS_URL: set one of them, not both",
        ),
        (
            {"AUTH_JWKS_URL": "ftp://gw.example/jwks.json"},
            "AUTH_JWKS_URL: expected a URL like https://host:port/... or http://host:port/...,"
            " got 'ftp://gw.example/jwks.json'",
        ),
        (
            {"AUTH_JWKS_URL": "https:///jwks.json"},
            "AUTH_JWKS_URL: expected a URL like https://host:port/..., got 'https:///jwks.json'",
        ),
        (
            {"AUTH_JWKS_URL": "https://ops:hunter2@gw.example:99999/jwks.json"},
            "AUTH_JWKS_URL: expected a URL like https://host:port/...,"
            " got 'https://ops:***@gw.example:99999/jwks.json'",
        ),
        (
            {"AUTH_JWKS_REFRESH_S": "0"},
            "AUTH_JWKS_REFRESH_S: expected an integer from 1 to 300, got '0'",
        ),
    ],
    ids=["both", "both-empty-jwks", "scheme", "no-host", "bad-port", "refresh"],
)
def test_a_bad_jwks_url_setting_fails_with_one_line_naming_it(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        PlatformConfig.from_env("wallet", {**SERVERS, **environ})
    assert str(error.value) == message


def test_the_jwks_can_be_read_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(jwks(EC))
    auth = PlatformConfig.from_env("wallet", {**SERVERS, "AUTH_JWKS": f"@{path}"}).auth
    assert [(k.kid, k.algorithm) for k in auth.jwks] == [(EC.kid, "ES256")]


def _rsa_jwk() -> dict[str, Any]:
    public = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    return {**RSAAlgorithm.to_jwk(public, as_dict=True), "kid": "rsa"}


def _private_jwk() -> dict[str, Any]:
    return {**OKPAlgorithm.to_jwk(ED.private, as_dict=True), "kid": "leaked"}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not json", 'AUTH_JWKS: expected a JWKS, JSON like {"keys": [...]}'),
        ('{"keys": {}}', 'AUTH_JWKS: expected a JWKS, JSON like {"keys": [...]}'),
        ('{"keys": ["k"]}', "AUTH_JWKS: keys[0]: expected a JSON object"),
        (
            json.dumps({"keys": [_rsa_jwk()]}),
            "AUTH_JWKS: keys[0]: only OKP Ed25519 and EC P-256 keys are accepted",
        ),
        (
            json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}),
            "AUTH_JWKS: keys[0]: only OKP Ed25519 and EC P-256 keys are accepted",
        ),
        (
            json.dumps(
                {"keys": [OKPAlgorithm.to_jwk(ed448.Ed448PrivateKey.generate().public_key(), True)]}
            ),
            "AUTH_JWKS: keys[0]: only OKP Ed25519 and EC P-256 keys are accepted",
        ),
        (
            json.dumps(
                {
                    "keys": [
                        ECAlgorithm.to_jwk(
                            ec.generate_private_key(ec.SECP384R1()).public_key(), True
                        )
                    ]
                }
            ),
            "AUTH_JWKS: keys[0]: only OKP Ed25519 and EC P-256 keys are accepted",
        ),
        (
            json.dumps({"keys": [{**EC.jwk(), "alg": "HS256"}]}),
            "AUTH_JWKS: keys[0]: this key may only sign with ES256",
        ),
        (
            json.dumps({"keys": [ED.jwk(), {**ED.jwk(), "use": "enc"}]}),
            "AUTH_JWKS: keys[1]: this key may only sign with EdDSA",
        ),
        (
            json.dumps({"keys": [_private_jwk()]}),
            "AUTH_JWKS: keys[0]: holds private key material; publish only the public key",
        ),
        (
            json.dumps({"keys": [{k: v for k, v in ED.jwk().items() if k != "kid"}]}),
            "AUTH_JWKS: keys[0]: needs a kid",
        ),
        (
            json.dumps({"keys": [{**ED.jwk(), "x": b64(b"short")}]}),
            "AUTH_JWKS: keys[0]: not a valid Ed25519 public key",
        ),
        (
            json.dumps({"keys": [{**EC.jwk(), "y": EC.jwk()["x"]}]}),
            "AUTH_JWKS: keys[0]: not a valid P-256 public key",
        ),
        (jwks(ED, EC, ED), "AUTH_JWKS: two keys share a kid"),
        ("@/nonexistent/jwks.json", "AUTH_JWKS: cannot read '/nonexistent/jwks.json': No such"),
        ("-1", "AUTH_JWKS: expected a JWKS"),
    ],
)
def test_a_bad_jwks_fails_with_one_line_naming_it_and_no_key_material(
    value: str, message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        PlatformConfig.from_env("wallet", {**SERVERS, "AUTH_JWKS": value})
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)
    for jwk in (_private_jwk(), EC.jwk()):
        assert jwk["x"] not in str(error.value)
        assert jwk.get("d", jwk["x"]) not in str(error.value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("lots", "AUTH_LEEWAY_S: expected an integer from 0 to 300, got 'lots'"),
        ("-1", "AUTH_LEEWAY_S: expected an integer from 0 to 300, got '-1'"),
        ("3600", "AUTH_LEEWAY_S: expected an integer from 0 to 300, got '3600'"),
    ],
)
def test_a_bad_leeway_fails_with_one_line_naming_it(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{message}$"):
        PlatformConfig.from_env("wallet", {**SERVERS, "AUTH_LEEWAY_S": value})
