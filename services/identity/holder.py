"""A citizen's phone, as the demo and the tests play it: it keeps a P-256 key and the city ID
bound to it, and answers an agency's OpenID4VP request with only the claims asked for.

``cardless id-check`` runs the whole story against a running city: the registry office issues
the demo citizen an ID, an agency asks whether they are of age and a resident, the phone
answers, the agency reads the answer, and the citizen can read who checked them.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from services.gateway import demo
from services.identity import credentials, sdjwt
from shared.ids import new_id

DEMO_CITIZEN = {
    "given_name": "Mei",
    "family_name": "Chen",
    "birthdate": "1990-05-17",
    "resident": True,
    "address": {
        "street_address": "1 Huacheng Avenue",
        "locality": "Tianhe",
        "postal_code": "510623",
        "country": "CN",
    },
    "portrait_sha256": "0" * 64,
    "id_number": "GZ-0000-0001",
}
DEMO_PURPOSE = "Age check for a reduced-fare travel pass"
# The demo agency's registration (IDENTITY_AGENCIES): what it may ask for, and why.
DEMO_AGENCIES = {
    "city-agency": {
        "name": "City transport office",
        "claims": ["age_over_18", "age_over_65", "resident", "address.locality"],
        "purposes": [DEMO_PURPOSE, "Senior concession check"],
    },
    "metro-concessions": {
        "name": "City metro (transit), concession fares",
        "claims": ["age_over_65"],
        "purposes": ["Concession fares: senior"],
    },
}
DEMO_QUERY = {
    "credentials": [
        {
            "id": "city_id",
            "format": "dc+sd-jwt",
            "claims": [{"path": ["age_over_18"]}, {"path": ["resident"]}],
        }
    ]
}


def answer(
    authorization_request: Mapping[str, Any],
    credential: str,
    key: ec.EllipticCurvePrivateKey,
    now: int,
) -> dict[str, Any]:
    """The phone's ``direct_post`` body: the credential with only the disclosures the DCQL
    query names, and a key-binding JWT for the request's nonce and the verifier's client_id."""
    query = authorization_request["dcql_query"]["credentials"][0]
    paths = [tuple(claim["path"]) for claim in query["claims"]]
    presentation = sdjwt.present(
        credential,
        paths,
        holder_key=key,
        nonce=authorization_request["nonce"],
        audience=authorization_request["client_id"],
        iat=now,
    )
    return {"state": authorization_request["state"], "vp_token": {query["id"]: [presentation]}}


def phone_key(data_dir: Path) -> ec.EllipticCurvePrivateKey:
    """The demo phone's ID key (``citizen/phone.pem``), made on first use."""
    path = data_dir / "citizen" / "phone.pem"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
        )
        path.touch(mode=0o600)
        path.write_bytes(pem)
    key = load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise demo.DemoError(f"{path}: expected a P-256 key")
    return key


def id_check(data_dir: Path, gateway_url: str) -> dict[str, Any]:
    """The demo's story, end to end through the gateway; what each party saw."""
    gateway_url = gateway_url.rstrip("/")
    key = phone_key(data_dir)
    credential = _credential(data_dir, gateway_url, key)
    agency = demo.access_token(data_dir, "city-agency", gateway_url, None)
    status, created = _post(
        f"{gateway_url}/v1/identity/requests",
        agency,
        {"purpose": DEMO_PURPOSE, "dcql_query": DEMO_QUERY},
    )
    if status != 201:
        raise demo.DemoError(f"the agency's request was refused: {created}")
    status, answered = respond(data_dir, created["authorization_request"], credential)
    result = _get(f"{gateway_url}/v1/identity/requests/{created['request_id']}", agency)
    return {"phone": {"status": status, "answer": answered}, "agency": result}


def respond(
    data_dir: Path, authorization: Mapping[str, Any], credential: str | None = None
) -> tuple[int, Any]:
    """The demo phone answers an agency's request with the demo citizen's ID (issued by
    ``id_check``): identity's status and answer."""
    if credential is None:
        credential = (data_dir / "citizen" / "city-id.txt").read_text().strip()
    body = answer(authorization, credential, phone_key(data_dir), int(time.time()))
    return _post(authorization["response_uri"], None, body)


def _credential(data_dir: Path, gateway_url: str, key: ec.EllipticCurvePrivateKey) -> str:
    """The demo citizen's ID, issued by the registry office on first use and kept."""
    path = data_dir / "citizen" / "city-id.txt"
    if path.exists():
        return path.read_text().strip()
    registry = demo.access_token(data_dir, "city-registry", gateway_url, None)
    body = {
        "citizen": DEMO_CITIZEN,
        "holder_jwk": credentials.public_jwk(key.public_key()),
        "holder_subject": demo.rider_subject(data_dir, gateway_url),
    }
    once = {"Idempotency-Key": f'"{new_id()}"'}
    status, issued = _post(f"{gateway_url}/v1/identity/credentials", registry, body, once)
    if status != 201:
        raise demo.DemoError(f"the registry office could not issue an ID: {issued}")
    path.touch(mode=0o600)
    path.write_text(issued["credential"])
    return str(issued["credential"])


def _post(
    url: str, token: str | None, body: Mapping[str, Any], headers: Mapping[str, str] = {}
) -> tuple[int, Any]:
    sent = {"Content-Type": "application/json", **headers}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(  # noqa: S310 - the operator's own gateway
        url, data=json.dumps(body).encode(), headers=sent, method="POST"
    )
    return demo.call(request)


def _get(url: str, token: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})  # noqa: S310
    return demo.call(request)[1]
