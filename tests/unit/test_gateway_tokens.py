"""The gateway's token rules that need no server: the client registry, key thumbprints, the
rotation schedule, form parsing, and the checks on assertions and DPoP proofs."""

from __future__ import annotations

import itertools
import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from services.gateway.assertions import (
    OAuthError,
    access_token_hash,
    check_assertion_times,
    header_key,
    parse_form,
    same_resource,
)
from services.gateway.clients import ClientsError, parse_clients
from services.gateway.tokens import TokenSettings
from shared.auth import Unauthenticated
from shared.keyring import RotationPolicy, jwk_thumbprint, plan_signing_periods

NOW = datetime(2030, 1, 1, 8, 30, tzinfo=UTC)
SETTINGS = TokenSettings(token_url="https://gateway.test/oauth/token")
PROVIDER_KEY = Ed25519PrivateKey.generate()


def public_jwk(private: Any, **extra: Any) -> dict[str, Any]:
    kind = OKPAlgorithm if isinstance(private, Ed25519PrivateKey) else ECAlgorithm
    return {**kind.to_jwk(private.public_key(), as_dict=True), **extra}


def client(client_id: str = "alipay-sandbox", **changes: Any) -> dict[str, Any]:
    entry = {
        "client_id": client_id,
        "kind": "provider",
        "scopes": ["wallet:settlement"],
        "jwks": {"keys": [public_jwk(PROVIDER_KEY, kid="alipay-1")]},
    }
    return {**entry, **changes}


def registry(*clients: dict[str, Any]) -> str:
    return json.dumps({"clients": list(clients)})


def refusal(text: str) -> str:
    with pytest.raises(ClientsError) as refused:
        parse_clients(text)
    return str(refused.value)


# The client registry


def test_a_registered_client_has_its_kind_scopes_and_pinned_keys() -> None:
    es_key = ec.generate_private_key(ec.SECP256R1())
    agency = client(
        "metro-agency",
        kind="agency",
        scopes=["transit:fares", "transit:read"],
        jwks={"keys": [public_jwk(es_key, kid="agency-1")]},
    )
    clients = parse_clients(registry(client(), agency))
    assert sorted(clients) == ["alipay-sandbox", "metro-agency"]
    provider = clients["alipay-sandbox"]
    assert (provider.kind, provider.scopes) == ("provider", frozenset({"wallet:settlement"}))
    assert [(k.kid, k.algorithm) for k in provider.keys] == [("alipay-1", "EdDSA")]
    assert clients["metro-agency"].key("agency-1") is not None
    assert clients["metro-agency"].key("alipay-1") is None
    assert clients["metro-agency"].keys[0].algorithm == "ES256"


def test_an_empty_registry_has_no_clients() -> None:
    assert parse_clients('{"clients": []}') == {}


@pytest.mark.parametrize("text", ["", "not json", "[]", '{"clients": {}}'])
def test_a_registry_that_is_not_a_client_list_is_refused(text: str) -> None:
    assert refusal(text) == 'expected JSON like {"clients": [...]}'


def test_a_duplicate_client_id_is_refused_naming_it() -> None:
    message = refusal(registry(client(), client()))
    assert message == "clients[1] (alipay-sandbox): duplicate client_id"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"kind": "bank"}, "kind must be one of agency, gate, operator, provider"),
        ({"scopes": []}, "scopes must be a non-empty list"),
        ({"scopes": "wallet:settlement"}, "scopes must be a non-empty list"),
        ({"scopes": ["wallet settlement"]}, "each scope is a non-empty string"),
        ({"jwks": {"keys": []}}, "jwks has no keys"),
        ({"jwks": None}, "jwks: expected a JWKS"),
        ({"secret": "s3cr3t"}, "unknown field 'secret'"),
    ],
)
def test_a_bad_client_entry_is_refused_naming_the_client(
    changes: dict[str, Any], expected: str
) -> None:
    message = refusal(registry(client("metro-gates", **changes)))
    assert message.startswith("clients[0] (metro-gates): ")
    assert expected in message


@pytest.mark.parametrize("client_id", ["", "has space", "x" * 129, 7, "-leading-dash"])
def test_a_client_with_a_bad_id_is_named_by_its_position(client_id: object) -> None:
    message = refusal(registry(client(client_id)))  # type: ignore[arg-type]
    assert message.startswith("clients[0]: client_id must be")


def test_no_client_may_call_itself_the_rider_app() -> None:
    assert "reserved for riders" in refusal(registry(client("rider-app")))


def test_a_private_key_in_a_clients_jwks_is_refused_without_echoing_it() -> None:
    private = OKPAlgorithm.to_jwk(PROVIDER_KEY, as_dict=True)
    message = refusal(registry(client(jwks={"keys": [{**private, "kid": "alipay-1"}]})))
    assert message.startswith("clients[0] (alipay-sandbox): jwks: keys[0]: holds private key")
    assert private["d"] not in message
    assert private["x"] not in message


def test_only_ed25519_and_p256_client_keys_are_accepted() -> None:
    rsa_jwk = RSAAlgorithm.to_jwk(rsa.generate_private_key(65537, 2048).public_key(), True)
    message = refusal(registry(client(jwks={"keys": [{**rsa_jwk, "kid": "rsa-1"}]})))
    assert "only OKP Ed25519 and EC P-256 keys are accepted" in message


# Thumbprints (RFC 7638) and token hashes (RFC 9449), against the RFCs' own examples


def test_an_ed25519_thumbprint_matches_rfc_8037() -> None:
    jwk = {"crv": "Ed25519", "kty": "OKP", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
    assert jwk_thumbprint(jwk) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_a_p256_thumbprint_matches_rfc_9449_and_ignores_other_members() -> None:
    jwk = {
        "kty": "EC",
        "x": "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs",
        "y": "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA",
        "crv": "P-256",
    }
    expected = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
    assert jwk_thumbprint(jwk) == expected
    assert jwk_thumbprint({**jwk, "kid": "phone", "alg": "ES256"}) == expected


def test_the_access_token_hash_matches_rfc_9449() -> None:
    token = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"
    assert access_token_hash(token) == "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"


# The rotation schedule


POLICY = RotationPolicy(sign_for_s=3600, publish_ahead_s=600, token_ttl_s=300, leeway_s=30)
HOUR = timedelta(hours=1)


def test_a_fresh_keyring_plans_the_key_signing_now_and_the_next() -> None:
    assert plan_signing_periods([], NOW, POLICY) == [
        (NOW, NOW + HOUR),
        (NOW + HOUR, NOW + 2 * HOUR),
    ]


def test_the_next_key_is_planned_ahead_of_its_publication() -> None:
    existing = [(NOW, NOW + HOUR), (NOW + HOUR, NOW + 2 * HOUR)]
    assert plan_signing_periods(existing, NOW + timedelta(minutes=30), POLICY) == []
    # Once the next key is due for publication, the one after it is planned already.
    later = NOW + timedelta(minutes=51)
    assert plan_signing_periods(existing, later, POLICY) == [(NOW + 2 * HOUR, NOW + 3 * HOUR)]


def test_a_gap_before_a_key_made_elsewhere_is_filled_up_to_it() -> None:
    ahead = NOW + timedelta(seconds=10)  # a replica whose clock runs ahead made this key
    existing = [(ahead, ahead + HOUR)]
    planned = plan_signing_periods(existing, NOW, POLICY)
    assert planned[0] == (NOW, ahead)
    assert planned[1] == (ahead + HOUR, ahead + 2 * HOUR)


periods_strategy = st.lists(
    st.tuples(st.integers(-7200, 14400), st.integers(1, 7200)), max_size=6
).map(lambda spans: sorted(spans))


@given(periods_strategy, st.integers(0, 10**6))
def test_planned_keys_never_overlap_and_leave_no_gap_until_the_horizon(
    spans: list[tuple[int, int]], microseconds: int
) -> None:
    existing: list[tuple[datetime, datetime]] = []
    for offset, length in spans:  # whatever is stored never overlaps (the table refuses it)
        start = NOW + timedelta(seconds=offset)
        if not existing or start >= existing[-1][1]:
            existing.append((start, start + timedelta(seconds=length)))
    now = NOW + timedelta(microseconds=microseconds)
    periods = sorted(existing + plan_signing_periods(existing, now, POLICY))
    assert all(start < end for start, end in periods)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(periods))
    covered_until = now
    for start, end in periods:
        if start <= covered_until:
            covered_until = max(covered_until, end)
    horizon = now + timedelta(seconds=POLICY.publish_ahead_s + POLICY.sign_for_s)
    assert covered_until >= horizon


@pytest.mark.parametrize(
    "changes",
    [{"algorithm": "RS256"}, {"sign_for_s": 0}, {"token_ttl_s": 0}, {"publish_ahead_s": -1}],
)
def test_a_rotation_policy_that_cannot_work_is_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="expected"):
        RotationPolicy(**changes)


# The token request's form


def test_a_form_reads_its_parameters_and_treats_blank_ones_as_absent() -> None:
    form = parse_form(b"grant_type=client_credentials&scope=&scope=wallet%3Aread+x")
    assert form == {"grant_type": "client_credentials", "scope": "wallet:read x"}


@pytest.mark.parametrize(
    "body",
    [b"grant_type=a&grant_type=b", b"grant_type", b"scope=%ff", b"\xff=1", b"a=1&" * 17],
    ids=["repeated", "no-value", "bad-percent-utf8", "bad-utf8", "too-many-fields"],
)
def test_a_body_that_is_not_a_clean_form_is_invalid_request(body: bytes) -> None:
    with pytest.raises(OAuthError) as refused:
        parse_form(body)
    assert refused.value.error == "invalid_request"


# Assertion times


def times(**claims: Any) -> None:
    check_assertion_times(claims, now=NOW.timestamp(), settings=SETTINGS, iat_required=True)


def test_a_short_assertion_issued_now_is_in_time() -> None:
    now = NOW.timestamp()
    times(iat=now, exp=now + 60)
    times(iat=now + 30, exp=now - 29)  # both within the leeway


@pytest.mark.parametrize(
    ("offsets", "reason"),
    [
        ({"iat": -120, "exp": -31}, "assertion expired"),
        ({"iat": 0, "exp": 331}, "assertion expires too far ahead"),
        ({"iat": 31, "exp": 60}, "assertion issued in the future"),
        ({"iat": 0, "exp": 60, "nbf": 31}, "assertion not yet valid"),
        ({"iat": 0, "exp": math.inf}, "malformed exp"),
        ({"iat": math.nan, "exp": 60}, "malformed iat"),
    ],
)
def test_an_assertion_out_of_time_is_refused(offsets: dict[str, float], reason: str) -> None:
    now = NOW.timestamp()
    with pytest.raises(Unauthenticated, match=reason):
        times(**{name: now + offset for name, offset in offsets.items()})


# Keys carried in a JWT header (phone sign-in, DPoP)


@pytest.mark.parametrize("exp", [True, "1893486000", None])
def test_a_time_that_is_not_a_number_is_refused(exp: object) -> None:
    with pytest.raises(Unauthenticated, match="malformed exp"):
        times(iat=NOW.timestamp(), exp=exp)


def test_a_header_key_gives_its_pinned_algorithm_and_thumbprint() -> None:
    for private, algorithm in [
        (Ed25519PrivateKey.generate(), "EdDSA"),
        (ec.generate_private_key(ec.SECP256R1()), "ES256"),
    ]:
        jwk = public_jwk(private)
        _, pinned, jkt = header_key({"alg": algorithm, "jwk": jwk})
        assert (pinned, jkt) == (algorithm, jwk_thumbprint(jwk))


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ({"alg": "EdDSA"}, "missing jwk header"),
        ({"alg": "EdDSA", "jwk": "a string"}, "missing jwk header"),
        (
            {"alg": "EdDSA", "jwk": OKPAlgorithm.to_jwk(PROVIDER_KEY, as_dict=True)},
            "jwk holds private key material",
        ),
        ({"alg": "ES256", "jwk": public_jwk(PROVIDER_KEY)}, "algorithm not allowed"),
        ({"alg": "none", "jwk": public_jwk(PROVIDER_KEY)}, "algorithm not allowed"),
        ({"alg": "HS256", "jwk": public_jwk(PROVIDER_KEY)}, "algorithm not allowed"),
        ({"alg": "EdDSA", "jwk": public_jwk(PROVIDER_KEY, alg="ES256")}, "algorithm not allowed"),
        ({"alg": "EdDSA", "jwk": {**public_jwk(PROVIDER_KEY), "x": "AAAA"}}, "malformed jwk"),
        ({"alg": "EdDSA", "jwk": {**public_jwk(PROVIDER_KEY), "x": 7}}, "malformed jwk"),
        ({"alg": "EdDSA", "jwk": {"kty": ["OKP"], "crv": "Ed25519"}}, "only Ed25519 and P-256"),
        (
            {
                "alg": "RS256",
                "jwk": RSAAlgorithm.to_jwk(rsa.generate_private_key(65537, 2048), True),
            },
            "jwk holds private key material",
        ),
    ],
)
def test_a_header_key_that_is_not_a_pinned_public_key_is_refused(
    header: dict[str, Any], reason: str
) -> None:
    with pytest.raises(Unauthenticated, match=reason):
        header_key(header)


def test_an_rsa_public_key_in_a_header_is_refused() -> None:
    jwk = RSAAlgorithm.to_jwk(rsa.generate_private_key(65537, 2048).public_key(), True)
    with pytest.raises(Unauthenticated, match="only Ed25519 and P-256"):
        header_key({"alg": "RS256", "jwk": jwk})


# DPoP's htu: the same resource, whatever the query and fragment


@pytest.mark.parametrize(
    "htu",
    [
        "https://gateway.test/wallet/balance",
        "https://gateway.test/wallet/balance?currency=CNY",
        "https://gateway.test/wallet/balance#top",
        "HTTPS://Gateway.TEST:443/wallet/balance",
    ],
)
def test_the_same_resource_matches_ignoring_query_fragment_and_case(htu: str) -> None:
    assert same_resource(htu, "https://gateway.test/wallet/balance?page=2")


@pytest.mark.parametrize(
    "htu",
    [
        "https://gateway.test/wallet/refunds",
        "https://gateway.test/wallet/Balance",
        "http://gateway.test/wallet/balance",
        "https://evil.test/wallet/balance",
        "https://gateway.test:8443/wallet/balance",
        "https://gateway.test:notaport/wallet/balance",
        "/wallet/balance",
        "",
    ],
)
def test_another_resource_does_not_match(htu: str) -> None:
    assert not same_resource(htu, "https://gateway.test/wallet/balance")


def test_an_empty_path_is_the_root() -> None:
    assert same_resource("https://gateway.test", "https://gateway.test/")


def test_a_malformed_request_url_never_matches() -> None:
    assert not same_resource("", "")
    assert not same_resource("https://gateway.test:x/", "https://gateway.test:x/")
