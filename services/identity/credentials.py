"""The city's ID credential: its claims, which a citizen may disclose one by one, its type
metadata, and its issuance as an SD-JWT VC bound to the citizen's phone key."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import date
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from services.identity import sdjwt
from shared.auth import JwksError, public_key

ADDRESS_MEMBERS = ("street_address", "locality", "postal_code", "country")
LABELS = {
    "given_name": "Given name",
    "family_name": "Family name",
    "birthdate": "Date of birth",
    "age_over_18": "Aged 18 or over",
    "age_over_65": "Aged 65 or over",
    "resident": "Resident of the city",
    "address": "Address",
    "portrait_sha256": "Portrait (SHA-256 of the registry's photo)",
    "id_number": "ID number",
}
# Every claim of the city ID, and each member of the address, is disclosed on its own.
DISCLOSABLE: tuple[tuple[str, ...], ...] = (
    *((name,) for name in LABELS),
    *(("address", member) for member in ADDRESS_MEMBERS),
)


class HolderKeyError(ValueError):
    """The phone's key is not a usable P-256 public JWK."""


class Address(msgspec.Struct, forbid_unknown_fields=True):
    street_address: str
    locality: str
    postal_code: str
    country: str  # ISO 3166-1 alpha-2


class Citizen(msgspec.Struct, forbid_unknown_fields=True):
    """What the city's registry knows of a citizen, as the registry office sends it."""

    given_name: str
    family_name: str
    birthdate: date
    resident: bool
    address: Address
    portrait_sha256: str
    id_number: str


def age_on(birthdate: date, day: date) -> int:
    """Whole years from ``birthdate`` to ``day`` (a 29 February birthday counts on 1 March)."""
    before_birthday = (day.month, day.day) < (birthdate.month, birthdate.day)
    return day.year - birthdate.year - before_birthday


def holder_key(jwk: Mapping[str, Any]) -> ec.EllipticCurvePublicKey:
    """The phone's public key from its JWK: P-256 only, since key-binding JWTs are ES256."""
    if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
        raise HolderKeyError("holder_jwk: expected a public P-256 JWK (kty EC, crv P-256)")
    try:
        _, key = public_key(dict(jwk), "holder_jwk")
    except JwksError as error:
        raise HolderKeyError(str(error)) from None
    assert isinstance(key, ec.EllipticCurvePublicKey), "a P-256 JWK gives a P-256 key"
    return key


def public_jwk(key: ec.EllipticCurvePublicKey) -> dict[str, Any]:
    """Only the members a confirmation key needs (RFC 7800 ``cnf.jwk``)."""
    jwk = ECAlgorithm.to_jwk(key, as_dict=True)
    return {name: jwk[name] for name in ("kty", "crv", "x", "y")}


def credential_claims(
    citizen: Citizen,
    *,
    issuer: str,
    vct: str,
    holder: ec.EllipticCurvePublicKey,
    status: Mapping[str, Any],
    issued_on: date,
    iat: int,
    exp: int,
) -> dict[str, Any]:
    """The credential's claims before concealment; ages as of the day of issue."""
    age = age_on(citizen.birthdate, issued_on)
    return {
        "iss": issuer,
        "vct": vct,
        "iat": iat,
        "nbf": iat,
        "exp": exp,
        "cnf": {"jwk": public_jwk(holder)},
        "status": dict(status),
        "given_name": citizen.given_name,
        "family_name": citizen.family_name,
        "birthdate": citizen.birthdate.isoformat(),
        "age_over_18": age >= 18,
        "age_over_65": age >= 65,
        "resident": citizen.resident,
        "address": msgspec.to_builtins(citizen.address),
        "portrait_sha256": citizen.portrait_sha256,
        "id_number": citizen.id_number,
    }


def issue(claims: Mapping[str, Any], sign: Callable[[dict[str, Any]], str]) -> str:
    """The SD-JWT VC: every personal claim concealed behind a digest, with a few decoys so the
    number of digests does not tell how many claims there are; ``sign`` signs the payload."""
    payload, disclosures = sdjwt.conceal(claims, DISCLOSABLE, decoys=3)
    return sdjwt.issuance(sign(payload), disclosures)


def type_metadata(vct: str) -> dict[str, Any]:
    """SD-JWT VC type metadata for the city ID: what each claim is, and that each is
    selectively disclosable."""
    return {
        "vct": vct,
        "name": "City ID",
        "description": "The city's digital identity card, held on the citizen's phone.",
        "display": [{"locale": "en-US", "name": "City ID"}],
        "claims": [
            {
                "path": list(path),
                "display": [{"locale": "en-US", "label": _label(path)}],
                "sd": "always",
            }
            for path in DISCLOSABLE
        ],
    }


def _label(path: tuple[str, ...]) -> str:
    return LABELS[path[0]] if len(path) == 1 else path[-1].replace("_", " ").capitalize()


def issuer_metadata(issuer: str, jwks: Mapping[str, Any]) -> dict[str, Any]:
    """JWT VC Issuer Metadata: who the issuer is and its keys, inline."""
    return {"issuer": issuer, "jwks": dict(jwks)}
