"""SD-JWT interop with the IETF reference implementation (PyPI sd-jwt 0.10.4) as a peer: the
city's credentials verify there, a reference issuer's verify here, with the same claims.

The reference verifier checks less than RFC 9901 (PEER.md), so it is an oracle for acceptance
only; rejections are tested against negative/cases.json in test_sdjwt_vectors.py.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwcrypto.jwk import JWK
from jwt.algorithms import ECAlgorithm
from sd_jwt.common import SDObj
from sd_jwt.holder import SDJWTHolder
from sd_jwt.issuer import SDJWTIssuer
from sd_jwt.utils.yaml_specification import load_yaml_specification
from sd_jwt.verifier import SDJWTVerifier

from services.identity.sdjwt import (
    IssuerKey,
    IssuerKeys,
    Policy,
    Rejected,
    Verified,
    conceal,
    issuance,
    present,
    verify,
)

CASES = Path(__file__).resolve().parents[1] / "data" / "sd-jwt" / "reference-testcases"
ISSUER, KID = "https://id.cardless.example", "city-id-2026-01"
VCT = "https://credentials.cardless.example/city_id"
NONCE, AUDIENCE = "b9c1f0e2a7d4", "https://transit-concessions.cardless.example"
NOW = 1_790_000_000
STATUS = {"status_list": {"idx": 4711, "uri": "https://id.cardless.example/statuslists/1"}}
CITIZEN = {
    "given_name": "Amara",
    "family_name": "Okafor-Lindqvist",
    "birthdate": "1961-02-14",
    "address": {"street_address": "Ørstedsvej 7", "locality": "Nørrebro", "country": "DK"},
    "age_equal_or_over": {"18": True, "65": False},
}
DISCLOSABLE = [
    ("given_name",),
    ("family_name",),
    ("birthdate",),
    ("address",),
    ("address", "street_address"),
    ("address", "locality"),
    ("age_equal_or_over", "18"),
    ("age_equal_or_over", "65"),
]
# What an agency asking for "first name, district, over 18" receives, beside the clear claims.
DISCLOSED = {
    "given_name": "Amara",
    "address": {"locality": "Nørrebro", "country": "DK"},
    "age_equal_or_over": {"18": True},
}


def public_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    jwk: dict[str, Any] = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return jwk


def only(key: IssuerKey, kid: str) -> IssuerKeys:
    """Our resolver for one issuer key, found by the kid the credential names."""
    return lambda header, payload: key if header.get("kid") == kid else None


class City:
    """The city's identity issuer (our side), and a citizen's wallet key."""

    def __init__(self) -> None:
        self.issuer = ec.generate_private_key(ec.SECP256R1())
        self.wallet = ec.generate_private_key(ec.SECP256R1())
        self.keys = only(IssuerKey(self.issuer.public_key(), "ES256"), KID)

    def credential(self) -> str:
        payload, disclosures = conceal({**self.clear_claims(), **CITIZEN}, DISCLOSABLE, decoys=4)
        headers = {"typ": "dc+sd-jwt", "kid": KID}
        token = jwt.encode(payload, self.issuer, algorithm="ES256", headers=headers)
        return issuance(token, disclosures)

    def clear_claims(self) -> dict[str, Any]:
        """The claims every presentation shows: who issued it, until when, to which wallet."""
        return {
            "iss": ISSUER,
            "iat": NOW - 86_400,
            "exp": NOW + 365 * 86_400,
            "vct": VCT,
            "status": STATUS,
            "cnf": {"jwk": public_jwk(self.wallet)},
        }

    def reference_verifies(self, presentation: str, **expected: str) -> dict[str, Any]:
        issuer_jwk = {**public_jwk(self.issuer), "kid": KID}

        def issuer_key(iss: str | None, header: Mapping[str, Any]) -> JWK:
            assert (iss, header["kid"]) == (ISSUER, KID)
            return JWK(**issuer_jwk)

        checked = SDJWTVerifier(presentation, issuer_key, **expected)
        payload: dict[str, Any] = checked.get_verified_payload()
        return payload


def test_our_credential_and_presentation_verify_in_the_reference_with_the_same_claims() -> None:
    city = City()
    presentation = present(
        city.credential(),
        [("given_name",), ("address", "locality"), ("age_equal_or_over", "18")],
        holder_key=city.wallet,
        nonce=NONCE,
        audience=AUDIENCE,
        iat=NOW,
    )
    theirs = city.reference_verifies(presentation, expected_aud=AUDIENCE, expected_nonce=NONCE)
    ours = verify(presentation, issuer_keys=city.keys, nonce=NONCE, audience=AUDIENCE, now=NOW)
    assert ours.claims == theirs == {**city.clear_claims(), **DISCLOSED}
    assert ours.key_bound


def test_our_presentation_without_key_binding_verifies_in_the_reference() -> None:
    city = City()
    presentation = present(
        city.credential(), [("family_name",)], holder_key=None, nonce=None, audience=None, iat=NOW
    )
    assert presentation.endswith("~")
    theirs = city.reference_verifies(presentation)
    ours = verify(
        presentation,
        issuer_keys=city.keys,
        nonce=None,
        audience=None,
        now=NOW,
        policy=Policy(require_key_binding=False),
    )
    # age_equal_or_over is in the clear, every member of it hidden: an empty object.
    only_name = {"family_name": "Okafor-Lindqvist", "age_equal_or_over": {}}
    assert ours.claims == theirs == {**city.clear_claims(), **only_name}
    assert not ours.key_bound


def test_the_reference_wallet_presents_our_credential_to_both_verifiers_alike() -> None:
    city = City()
    wallet = SDJWTHolder(city.credential())
    wallet.create_presentation(
        {"given_name": True, "address": {"locality": True}, "age_equal_or_over": {"18": True}},
        nonce=NONCE,
        aud=AUDIENCE,
        holder_key=JWK.from_pyca(city.wallet),
    )
    presentation = wallet.sd_jwt_presentation
    theirs = city.reference_verifies(presentation, expected_aud=AUDIENCE, expected_nonce=NONCE)
    now = int(time.time())  # the reference stamps its KB-JWT with the wall clock
    ours = verify(presentation, issuer_keys=city.keys, nonce=NONCE, audience=AUDIENCE, now=now)
    assert ours.claims == theirs == {**city.clear_claims(), **DISCLOSED}


def reference_credential(issuer: JWK, wallet: JWK, *, sign_alg: str) -> str:
    """An SD-JWT VC from the reference issuer, presented by the reference wallet."""
    now = int(time.time())
    user_claims = {
        "iss": ISSUER,
        "iat": now - 60,
        "exp": now + 86_400,
        "vct": VCT,
        "status": STATUS,
        SDObj("given_name"): "李",
        SDObj("family_name"): "Wei",
        SDObj("address"): {SDObj("locality"): "广州", "country": "CN"},
        "nationalities": [SDObj("CN"), SDObj("PT")],
    }
    issued = SDJWTIssuer(
        user_claims,
        issuer,
        holder_key=wallet,
        sign_alg=sign_alg,
        add_decoy_claims=True,
        extra_header_parameters={"typ": "dc+sd-jwt", "kid": KID},
    )
    holder = SDJWTHolder(issued.sd_jwt_issuance)
    holder.create_presentation(
        {"given_name": True, "address": {"locality": True}, "nationalities": [True, False]},
        nonce=NONCE,
        aud=AUDIENCE,
        holder_key=wallet,
    )
    presentation: str = holder.sd_jwt_presentation
    return presentation


@pytest.mark.parametrize("algorithm", ["ES256", "EdDSA"])
def test_a_reference_issuers_credential_verifies_here_with_non_ascii_values(
    algorithm: str,
) -> None:
    wallet = JWK.generate(kty="EC", crv="P-256")  # the reference pins KB-JWTs to ES256
    private: Any = (
        Ed25519PrivateKey.generate()
        if algorithm == "EdDSA"
        else ec.generate_private_key(ec.SECP256R1())
    )
    presentation = reference_credential(JWK.from_pyca(private), wallet, sign_alg=algorithm)
    keys = only(IssuerKey(private.public_key(), algorithm), KID)
    verified = verify(
        presentation, issuer_keys=keys, nonce=NONCE, audience=AUDIENCE, now=int(time.time())
    )
    claims = verified.claims
    assert (claims["given_name"], claims["address"]) == (
        "李",
        {"locality": "广州", "country": "CN"},
    )
    assert claims["nationalities"] == ["CN"]
    assert "family_name" not in claims
    assert (claims["vct"], claims["status"]) == (VCT, STATUS)
    assert verified.holder_jwk == wallet.export_public(as_dict=True)
    assert verified.key_bound


# -- The reference implementation's own test cases ----------------------------------------


def reference_settings() -> dict[str, Any]:
    settings: dict[str, Any] = yaml.safe_load((CASES / "settings.yml").read_text("utf-8"))
    return settings


@pytest.mark.parametrize("name", sorted(path.name for path in CASES.iterdir() if path.is_dir()))
def test_the_reference_test_cases_issued_and_presented_there_verify_here(name: str) -> None:
    settings = reference_settings()
    case = load_yaml_specification(CASES / name / "specification.yml")
    keys = settings["key_settings"]
    issuer, wallet = JWK(**keys["issuer_keys"][0]), JWK(**keys["holder_key"])
    key_binding = case.get("key_binding", False)
    form = case.get("serialization_format", "compact")
    issued = SDJWTIssuer(
        {"iss": settings["identifiers"]["issuer"], **case["user_claims"]},
        issuer,
        holder_key=wallet if key_binding else None,
        add_decoy_claims=case.get("add_decoy_claims", False),
        serialization_format=form,
        extra_header_parameters=case.get("extra_header_parameters") or {},
    )
    nonce = settings["key_binding_nonce"] if key_binding else None
    audience = settings["identifiers"]["verifier"] if key_binding else None
    holder = SDJWTHolder(issued.sd_jwt_issuance, serialization_format=form)
    holder.create_presentation(
        case["holder_disclosed_claims"], nonce, audience, wallet if key_binding else None
    )
    issuer_key = IssuerKey(issuer.get_op_key("verify"), "ES256")

    def ours() -> Verified:
        return verify(
            holder.sd_jwt_presentation,
            issuer_keys=lambda header, payload: issuer_key,
            nonce=nonce,
            audience=audience,
            now=int(time.time()),  # the reference stamps its KB-JWT with the wall clock
            policy=Policy(require_key_binding=key_binding, require_vc=False),
        )

    if form == "json":
        # These two cases use 0.10.4's own JSON layout (disclosures and kb_jwt as top-level
        # members), which is not RFC 9901 section 8's either; and we take the compact form
        # only (a product choice), so any JSON serialization is refused as malformed input.
        with pytest.raises(Rejected) as refused:
            ours()
        assert refused.value.reason == "malformed"
        return
    expected = {**case["expect_verified_user_claims"], "iss": settings["identifiers"]["issuer"]}
    if key_binding:
        expected["cnf"] = {"jwk": wallet.export_public(as_dict=True)}
    assert ours().claims == expected
