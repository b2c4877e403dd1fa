"""SD-JWT against the specifications' own examples: what they accept we accept, claim for claim,
and every derived attack in negative/cases.json is refused for the reason we name."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.identity.sdjwt import (
    REASONS,
    IssuerKey,
    IssuerKeys,
    Policy,
    Rejected,
    Verified,
    conceal,
    disclosure,
    issuance,
    present,
    process,
    sd_hash,
    verify,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "sd-jwt"
PRESENTATIONS = sorted(
    path.relative_to(DATA).as_posix()
    for folder in ("rfc9901", "sd-jwt-vc")
    for path in (DATA / folder).glob("*.json")
    if isinstance(json.loads(path.read_text(encoding="utf-8")).get("sd_jwt_presentation"), str)
)
PAYLOAD_ONLY = ["s6.1-flat", "s6.2-structured", "s6.2-structured-one-open", "s6.3-recursive"]
# What we refuse each derived attack for. The case's own expected.reason is prose; this is the
# stable code the identity service maps to its answer.
NEGATIVE_REASONS = {
    "neg-01-wrong-nonce": "key_binding_nonce",
    "neg-02-wrong-aud": "key_binding_audience",
    "neg-03-kb-stale": "key_binding_stale",
    "neg-04-sd-hash-dropped-disclosure": "key_binding_sd_hash",
    "neg-05-forged-disclosure": "disclosure_unreferenced",
    "neg-06-tampered-disclosure": "disclosure_unreferenced",
    "neg-07-tampered-issuer-payload": "issuer_signature",
    "neg-08-alg-none": "unsupported_algorithm",
    "neg-09-expired": "expired",
    "neg-10-kb-wrong-key": "key_binding_signature",
    "neg-11-kb-missing": "key_binding_missing",
    "neg-12-kb-typ": "key_binding_typ",
    "neg-13-kb-alg-none": "unsupported_algorithm",
    "neg-14-kb-future-iat": "key_binding_stale",
    "neg-15-duplicate-disclosure": "disclosure_duplicate",
    "neg-16-claim-name-collision": "disclosure_invalid",
    "neg-17-reserved-claim-name": "disclosure_invalid",
    "neg-18-wrong-disclosure-shape": "disclosure_invalid",
    "neg-19-duplicate-digest-in-payload": "digest_duplicate",
    "neg-20-unsupported-sd-alg": "unsupported_algorithm",
    "neg-21-untrusted-issuer-key": "issuer_signature",
    "neg-22-vc-profile-on-plain-sd-jwt": "not_a_vc",
    "neg-23-vc-vct-selectively-disclosed": "protected_claim_disclosable",
}
# Reasons the vectors cannot show, each shown by a test below that derives its own case.
DERIVED_REASONS = {"malformed", "unknown_issuer_key", "not_yet_valid", "holder_key"}


@cache
def vector(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DATA / name).read_text(encoding="utf-8"))
    return loaded


@cache
def private_key(name: str) -> ec.EllipticCurvePrivateKey:
    """A published example key (keys.json): test-only, anyone can sign with it."""
    jwk = vector("keys.json")["keys"][name]["private_jwk"]
    key = jwt.PyJWK({k: jwk[k] for k in ("kty", "crv", "x", "y", "d")}, "ES256").key
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def trusting(jwk: Mapping[str, Any]) -> IssuerKeys:
    """A resolver that trusts one issuer key for every credential it is asked about."""
    key = jwt.PyJWK(dict(jwk), "ES256").key
    assert isinstance(key, ec.EllipticCurvePublicKey)
    issuer_key = IssuerKey(key, "ES256")
    return lambda header, payload: issuer_key


def verify_vector(case: dict[str, Any], presentation: str, **changes: Any) -> Verified:
    """Verify as the vector says: its key, nonce, audience and time; VC rules for dc+sd-jwt."""
    given = case["verify_with"]
    policy = Policy(
        require_key_binding=given["key_binding_required"],
        require_vc=case["issuer_signed_jwt_header"]["typ"] == "dc+sd-jwt",
    )
    return verify(
        presentation,
        issuer_keys=trusting(case["issuer_public_jwk"]),
        nonce=given.get("expected_nonce"),
        audience=given.get("expected_aud"),
        now=given["verification_time"],
        policy=dataclasses.replace(policy, **changes),
    )


def refusal(presentation: str, **kwargs: Any) -> str:
    with pytest.raises(Rejected) as refused:
        verify(presentation, **kwargs)
    return refused.value.reason


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(payload: dict[str, Any], key: ec.EllipticCurvePrivateKey, **header: Any) -> str:
    return jwt.encode(payload, key, algorithm="ES256", headers=header)


def kb_jwt(without_kb: str, *, nonce: str, aud: str, iat: int) -> str:
    """A KB-JWT by the examples' (published) holder key, bound to ``without_kb``."""
    claims = {"nonce": nonce, "aud": aud, "iat": iat, "sd_hash": sd_hash(without_kb)}
    return sign(claims, private_key("rfc9901-holder"), typ="kb+jwt")


# -- Presentations the specifications accept -------------------------------------------


@pytest.mark.parametrize("name", PRESENTATIONS)
def test_a_published_presentation_gives_exactly_the_specifications_processed_payload(
    name: str,
) -> None:
    case = vector(name)
    assert case["expected"]["result"] == "accept"
    verified = verify_vector(case, case["sd_jwt_presentation"])
    assert verified.claims == case["expected"]["processed_payload"]
    assert verified.header == case["issuer_signed_jwt_header"]
    assert verified.key_bound == case["verify_with"]["key_binding_required"]
    assert verified.holder_jwk == case.get("holder_public_jwk")


@pytest.mark.parametrize(
    "name", [name for name in PRESENTATIONS if "sd_jwt_issuance" in vector(name)]
)
def test_an_issuance_with_every_disclosure_reveals_every_input_claim(name: str) -> None:
    case = vector(name)
    verified = verify_vector(case, case["sd_jwt_issuance"], require_key_binding=False)
    clear = {k: v for k, v in case["sd_jwt_payload"].items() if k not in ("_sd", "_sd_alg")}
    assert verified.claims == {**clear, **case["input_claims"]}
    assert not verified.key_bound
    everything = case["expected"].get("processed_payload_of_issuance_with_all_disclosures")
    assert everything in (None, verified.claims)


def test_the_sd_jwt_vc_issuer_key_is_looked_up_by_the_kid_and_iss_it_names() -> None:
    case = vector("sd-jwt-vc/identity-credential-kb.json")
    trusted = trusting(case["issuer_public_jwk"])
    asked: list[tuple[Any, Any]] = []

    def by_kid(header: Mapping[str, Any], payload: Mapping[str, Any]) -> IssuerKey | None:
        asked.append((header.get("kid"), payload.get("iss")))
        return trusted(header, payload) if header.get("kid") == "doc-signer-05-25-2022" else None

    given = case["verify_with"]
    verified = verify(
        case["sd_jwt_presentation"],
        issuer_keys=by_kid,
        nonce=given["expected_nonce"],
        audience=given["expected_aud"],
        now=given["verification_time"],
    )
    assert verified.claims["vct"] == "https://credentials.example.com/identity_credential"
    assert asked == [("doc-signer-05-25-2022", "https://example.com/issuer")]


def test_a_credential_without_cnf_is_refused_where_the_agency_requires_holder_binding() -> None:
    case = vector("sd-jwt-vc/identity-credential-no-kb.json")
    reason = refusal(
        case["sd_jwt_presentation"],
        issuer_keys=trusting(case["issuer_public_jwk"]),
        nonce="1234567890",
        audience="https://example.com/verifier",
        now=case["verify_with"]["verification_time"],
    )
    assert reason == "key_binding_missing"


def test_a_kb_jwt_is_checked_even_where_key_binding_is_not_required() -> None:
    case = vector("rfc9901/s5-simple.json")
    given = case["verify_with"]
    lenient = Policy(require_key_binding=False, require_vc=False)
    kwargs: dict[str, Any] = {
        "issuer_keys": trusting(case["issuer_public_jwk"]),
        "now": given["verification_time"],
        "policy": lenient,
    }
    presentation = case["sd_jwt_presentation"]
    assert refusal(presentation, nonce=None, audience=None, **kwargs) == "key_binding_nonce"
    audience = given["expected_aud"]
    assert refusal(presentation, nonce="0", audience=audience, **kwargs) == "key_binding_nonce"
    verified = verify(presentation, nonce="1234567890", audience=audience, **kwargs)
    assert verified.key_bound


def test_requiring_key_binding_without_a_nonce_and_audience_is_a_programming_error() -> None:
    case = vector("rfc9901/s5-simple.json")
    with pytest.raises(ValueError, match="nonce and audience"):
        verify(
            case["sd_jwt_presentation"],
            issuer_keys=trusting(case["issuer_public_jwk"]),
            nonce="1234567890",
            audience=None,
            now=case["verify_with"]["verification_time"],
        )


# -- Disclosures and processing (the payload-only vectors) ------------------------------


def test_a_disclosure_is_compact_utf8_json_and_its_digest_is_over_the_string_as_sent() -> None:
    case = vector("rfc9901/s4.2-disclosure-encoding.json")
    salt, name, value = case["object_property_disclosure"]["contents"]
    built = disclosure(name, value, salt=salt)
    encodings = case["equivalent_encodings_of_same_claim"]
    assert built.encoded == encodings["no_whitespace"]
    assert built.digest == encodings["digests"]["no_whitespace"]
    assert (built.name, built.value) == ("family_name", "Möbius")


@pytest.mark.parametrize("encoding", ["escaped_unicode", "no_whitespace", "newlines"])
def test_each_encoding_of_one_claim_matches_its_own_digest_and_no_other(encoding: str) -> None:
    case = vector("rfc9901/s4.2-disclosure-encoding.json")
    encoded = case["equivalent_encodings_of_same_claim"][encoding]
    own = case["equivalent_encodings_of_same_claim"]["digests"][encoding]
    assert process({"_sd": [own]}, [encoded]) == {"family_name": "Möbius"}
    original = case["object_property_disclosure"]["sha256_digest"]
    with pytest.raises(Rejected) as refused:
        process({"_sd": [original]}, [encoded])
    assert refused.value.reason == "disclosure_unreferenced"


def test_the_specifications_disclosure_example_applies_to_its_payload() -> None:
    case = vector("rfc9901/s4.2-disclosure-encoding.json")["object_property_disclosure"]
    claims = process(case["payload_using_it"], [case["disclosure"]])
    assert claims == case["processed_payload"]


def test_an_undisclosed_array_element_is_dropped_and_a_disclosed_one_keeps_its_place() -> None:
    case = vector("rfc9901/s4.2-disclosure-encoding.json")["array_element_disclosure"]
    assert process(case["payload_using_it"], []) == case["processed_without_disclosure"]
    disclosed = process(case["payload_using_it"], [case["disclosure"]])
    assert disclosed == case["processed_with_disclosure"]
    salt, value = case["contents"]
    assert disclosure(None, value, salt=salt).name is None


def published_disclosures() -> list[Any]:
    return [
        pytest.param(entry, id=f"{path.stem}:{i}:{entry['claim']}")
        for folder in ("rfc9901", "sd-jwt-vc")
        for path in sorted((DATA / folder).glob("*.json"))
        for i, entry in enumerate(vector(f"{folder}/{path.name}").get("disclosures", []))
    ]


@pytest.mark.parametrize("entry", published_disclosures())
def test_every_published_disclosure_matches_the_digest_printed_beside_it(
    entry: dict[str, Any],
) -> None:
    digest, encoded = entry["digest"], entry["disclosure"]
    assert digest == b64(hashlib.sha256(encoded.encode("ascii")).digest())
    if len(entry["decoded"]) == 2:  # an array element
        assert len(process({"list": [{"...": digest}]}, [encoded])["list"]) == 1
    else:
        assert entry["claim"] in process({"object": {"_sd": [digest]}}, [encoded])["object"]


@pytest.mark.parametrize("name", PAYLOAD_ONLY)
def test_applying_every_disclosure_gives_the_full_payload(name: str) -> None:
    case = vector(f"rfc9901/{name}.json")
    encoded = [entry["disclosure"] for entry in case["disclosures"]]
    claims = process(case["sd_jwt_payload"], encoded)
    assert claims == case["expected"]["processed_payload_with_all_disclosures"]


@pytest.mark.parametrize("name", PAYLOAD_ONLY)
def test_the_payload_only_examples_verify_end_to_end_once_signed(name: str) -> None:
    case = vector(f"rfc9901/{name}.json")
    token = sign(case["sd_jwt_payload"], private_key("rfc9901-issuer"), typ="example+sd-jwt")
    encoded = [entry["disclosure"] for entry in case["disclosures"]]
    verified = verify(
        "~".join([token, *encoded, ""]),
        issuer_keys=trusting(case["issuer_public_jwk"]),
        nonce=None,
        audience=None,
        now=1748536865,
        policy=Policy(require_key_binding=False, require_vc=False),
    )
    assert verified.claims == case["expected"]["processed_payload_with_all_disclosures"]


def test_a_member_disclosure_sent_without_its_recursive_parent_is_refused() -> None:
    case = vector("rfc9901/s6.3-recursive.json")
    street = next(entry for entry in case["disclosures"] if entry["claim"] == "street_address")
    with pytest.raises(Rejected) as refused:
        process(case["sd_jwt_payload"], [street["disclosure"]])
    assert refused.value.reason == "disclosure_unreferenced"


# -- Formats we do not take, and the status-list credential ------------------------------


@pytest.mark.parametrize(
    "form", ["flattened_issuance", "flattened_presentation", "general_presentation"]
)
def test_the_json_serialization_is_refused_as_malformed_not_crashed_on(form: str) -> None:
    case = vector("rfc9901/s8-json-serialization.json")
    presentation = json.dumps(case[form])
    given = case["verify_with"]
    reason = refusal(
        presentation,
        issuer_keys=trusting(case["issuer_public_jwk"]),
        nonce=given["expected_nonce"],
        audience=given["expected_aud"],
        now=given["verification_time"],
        policy=Policy(require_vc=False),
    )
    assert reason == "malformed"


def test_the_revoked_referenced_token_verifies_and_hands_its_status_to_the_caller() -> None:
    case = vector("status-list/referenced-token-revoked.json")
    verified = verify(
        case["sd_jwt_issuance"],
        issuer_keys=trusting(case["issuer_public_jwk"]),
        nonce=None,
        audience=None,
        now=1700000000,  # the file's note: inside the status list token's validity
        policy=Policy(require_key_binding=False, require_vc=False),
    )
    assert verified.claims == case["processed_payload_with_all_disclosures"]
    assert verified.claims["status"] == {
        "status_list": {"idx": 0, "uri": "https://example.com/statuslists/1"}
    }


# -- Attacks ------------------------------------------------------------------------------


def negative_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = vector("negative/cases.json")["cases"]
    return cases


@pytest.mark.parametrize("case", negative_cases(), ids=lambda case: case["id"])
def test_every_derived_attack_is_refused_for_its_own_reason(case: dict[str, Any]) -> None:
    given = case["verify_with"]
    assert case["expected"]["result"] == "reject"
    reason = refusal(
        case["sd_jwt_presentation"],
        issuer_keys=trusting(given["issuer_public_jwk"]),
        nonce=given["expected_nonce"],
        audience=given["expected_aud"],
        now=given["verification_time"],
        policy=Policy(
            require_key_binding=given["key_binding_required"],
            require_vc=given["profile"] == "sd-jwt-vc",
            kb_max_age_s=given["kb_jwt_max_age_seconds"],
        ),
    )
    assert reason == NEGATIVE_REASONS[case["id"]]


def test_the_reason_table_names_every_case_and_with_the_derived_cases_every_reason() -> None:
    assert set(NEGATIVE_REASONS) == {case["id"] for case in negative_cases()}
    assert set(NEGATIVE_REASONS.values()) | DERIVED_REASONS == REASONS


def test_an_issuer_the_resolver_does_not_know_is_refused() -> None:
    case = vector("sd-jwt-vc/pid-aendgard.json")
    given = case["verify_with"]
    reason = refusal(
        case["sd_jwt_presentation"],
        issuer_keys=lambda header, payload: None,
        nonce=given["expected_nonce"],
        audience=given["expected_aud"],
        now=given["verification_time"],
    )
    assert reason == "unknown_issuer_key"


def test_an_issuer_key_pinned_to_another_algorithm_refuses_the_credential() -> None:
    case = vector("sd-jwt-vc/pid-aendgard.json")
    given = case["verify_with"]
    eddsa = IssuerKey(Ed25519PrivateKey.generate().public_key(), "EdDSA")
    reason = refusal(
        case["sd_jwt_presentation"],
        issuer_keys=lambda header, payload: eddsa,
        nonce=given["expected_nonce"],
        audience=given["expected_aud"],
        now=given["verification_time"],
    )
    assert reason == "unsupported_algorithm"


def test_an_issuer_key_must_be_pinned_to_the_algorithm_its_curve_signs_with() -> None:
    with pytest.raises(ValueError, match="P-256"):
        IssuerKey(ec.generate_private_key(ec.SECP384R1()).public_key(), "ES256")
    with pytest.raises(ValueError, match="Ed25519"):
        IssuerKey(ec.generate_private_key(ec.SECP256R1()).public_key(), "EdDSA")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"nbf": 1748536865 + 3600}, "not_yet_valid"),
        ({"iat": 1748536865 + 3600}, "not_yet_valid"),
        ({"exp": 1748536865 - 61}, "expired"),
        ({"exp": "2030-01-01"}, "malformed"),
        ({"cnf": {"jwk": {"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"}}}, "holder_key"),
        ({"cnf": None}, "holder_key"),
    ],
    ids=["nbf-future", "iat-future", "expired", "exp-not-a-number", "cnf-not-a-key", "no-cnf"],
)
def test_a_re_signed_credential_with_bad_validity_or_holder_key_is_refused(
    change: dict[str, Any], reason: str
) -> None:
    case = vector("rfc9901/s5-simple.json")
    payload = {k: v for k, v in {**case["sd_jwt_payload"], **change}.items() if v is not None}
    token = sign(payload, private_key("rfc9901-issuer"), typ="example+sd-jwt")
    without_kb = "~".join([token, *case["sd_jwt_presentation"].split("~")[1:-1], ""])
    given = case["verify_with"]
    nonce, aud, now = given["expected_nonce"], given["expected_aud"], given["verification_time"]
    presentation = without_kb + kb_jwt(without_kb, nonce=nonce, aud=aud, iat=now)
    assert (
        refusal(
            presentation,
            issuer_keys=trusting(case["issuer_public_jwk"]),
            nonce=nonce,
            audience=aud,
            now=now,
            policy=Policy(require_vc=False),
        )
        == reason
    )


def test_the_credential_validity_allows_the_policys_clock_leeway() -> None:
    case = vector("rfc9901/s5-simple.json")
    given = case["verify_with"]
    late = given["verification_time"] - 59
    payload = {**case["sd_jwt_payload"], "exp": late, "nbf": given["verification_time"] + 59}
    token = sign(payload, private_key("rfc9901-issuer"), typ="example+sd-jwt")
    verified = verify(
        issuance(token, []),
        issuer_keys=trusting(case["issuer_public_jwk"]),
        nonce=None,
        audience=None,
        now=given["verification_time"],
        policy=Policy(require_key_binding=False, require_vc=False),
    )
    assert verified.claims["exp"] == late


# -- The issuer and the holder ---------------------------------------------------------------

CLAIMS = {
    "iss": "https://id.cardless.example",
    "vct": "https://credentials.cardless.example/city_id",
    "status": {"status_list": {"idx": 7, "uri": "https://id.cardless.example/statuslists/1"}},
    "given_name": "Jun",
    "address": {"locality": "Tianhe", "country": "CN"},
}


def test_the_issuer_hides_nested_paths_recursively_among_sorted_digests_and_decoys() -> None:
    paths = [("given_name",), ("address",), ("address", "locality")]
    payload, disclosures = conceal(CLAIMS, paths, decoys=3)
    assert [d.name for d in disclosures] == ["given_name", "locality", "address"]
    assert payload["_sd"] == sorted(payload["_sd"])
    assert len(payload["_sd"]) == 2 + 3
    assert {d.digest for d in disclosures} - set(payload["_sd"]) == {disclosures[1].digest}
    assert disclosures[2].value == {"country": "CN", "_sd": [disclosures[1].digest]}
    assert payload["_sd_alg"] == "sha-256"
    assert {"given_name", "address"}.isdisjoint(payload)
    encoded = [d.encoded for d in disclosures]
    assert process(payload, encoded) == CLAIMS


@pytest.mark.parametrize(
    "path",
    [("vct",), ("status",), ("iss",), ("nickname",), ("address", "postal_code"), ()],
    ids=["vct", "status", "iss", "absent", "absent-nested", "empty"],
)
def test_the_issuer_refuses_to_conceal_a_protected_or_absent_claim(path: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="disclosable"):
        conceal(CLAIMS, [path])


def test_our_holder_presents_the_specifications_issuance_with_only_the_chosen_claims() -> None:
    case = vector("rfc9901/s5-simple.json")
    given = case["verify_with"]
    nonce, aud, now = given["expected_nonce"], given["expected_aud"], given["verification_time"]
    presentation = present(
        case["sd_jwt_issuance"],
        [("given_name",), ("family_name",), ("address",)],
        holder_key=private_key("rfc9901-holder"),
        nonce=nonce,
        audience=aud,
        iat=now,
    )
    verified = verify_vector(case, presentation)
    # The RFC's own presentation also discloses one nationality, an array element: our holder
    # discloses object members only, so the array arrives with every element withheld.
    assert verified.claims == {**case["expected"]["processed_payload"], "nationalities": []}
    assert verified.key_bound


@pytest.mark.parametrize(
    "path",
    [("nickname",), ("address", "postal_code"), ("iss", "x"), (), ("nationalities", 0)],
    ids=["absent", "absent-inside-a-disclosure", "inside-a-string", "empty", "array-index"],
)
def test_the_holder_refuses_to_present_a_claim_the_credential_does_not_have(
    path: tuple[Any, ...],
) -> None:
    case = vector("rfc9901/s5-simple.json")
    with pytest.raises(ValueError, match="claim"):
        present(case["sd_jwt_issuance"], [path], holder_key=None, nonce=None, audience=None, iat=0)


def test_the_holder_takes_an_issuance_not_a_presentation() -> None:
    case = vector("rfc9901/s5-simple.json")
    with pytest.raises(ValueError, match="issuance"):
        present(case["sd_jwt_presentation"], [], holder_key=None, nonce=None, audience=None, iat=0)
