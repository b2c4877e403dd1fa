"""The city ID as its users live it: the registry office issues, an agency asks, the citizen's
phone answers with only what was asked, the citizen reads who checked them; revocation,
attacks and tampering, with the gateway's tokens and real PostgreSQL and Redis."""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric import ec
from jwcrypto.jwk import JWK
from jwt.utils import base64url_decode
from sd_jwt.common import SDObj
from sd_jwt.holder import SDJWTHolder
from sd_jwt.issuer import SDJWTIssuer
from sd_jwt.verifier import SDJWTVerifier

from services.identity import audit, auditlog, holder, statuslist
from services.identity.credentials import public_jwk
from shared.auth import parse_jwks
from shared.config import PlatformConfig
from shared.service import POOL, Service, create_app
from tests.support import behind_the_gateway, eventually
from tests.support import gateway_token as token

# A second issuer the city trusts (IDENTITY_TRUSTED_ISSUERS): the reference library issues
# with its key, as another authority's software would.
PEER_ISSUER, PEER_KID = "https://peer-issuer.example", "peer-2026"
PEER_KEY = JWK.generate(kty="EC", crv="P-256", kid=PEER_KID)
PURPOSE = holder.DEMO_PURPOSE
AGENCIES = {
    "city-agency": {"claims": ["age_over_18", "resident", "address.locality"],
                    "purposes": [PURPOSE]},
    "other-agency": {"claims": ["age_over_18"], "purposes": [PURPOSE]},
}  # fmt: skip
CITIZEN = holder.DEMO_CITIZEN


def registry() -> dict[str, str]:
    return token("city-registry", "identity:issue", "identity:admin")


def agency(name: str = "city-agency") -> dict[str, str]:
    return token(name, "identity:verify")


def citizen(subject: str = "rider-7") -> dict[str, str]:
    return token(subject, "identity:holder")


@pytest.fixture
async def api(
    config: PlatformConfig, identity_service: Service, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[TestClient]:
    monkeypatch.setenv("IDENTITY_AGENCIES", json.dumps(AGENCIES))
    monkeypatch.setenv("IDENTITY_PUBLIC_URL", "https://city.example")
    monkeypatch.setenv("IDENTITY_STATUS_LIST_SIZE", "4096")
    monkeypatch.setenv("IDENTITY_STATUS_REFRESH_S", "1")
    monkeypatch.setenv("IDENTITY_CHECKPOINT_S", "1")
    peer_jwks = {"keys": [{**json.loads(PEER_KEY.export_public()), "alg": "ES256"}]}
    monkeypatch.setenv("IDENTITY_TRUSTED_ISSUERS", json.dumps({PEER_ISSUER: peer_jwks}))
    app = create_app(identity_service, behind_the_gateway(config))
    async with TestClient(TestServer(app)) as client:
        yield client


@dataclasses.dataclass
class Phone:
    """A citizen's phone: its key and the ID the registry issued to it."""

    key: ec.EllipticCurvePrivateKey
    credential: str
    credential_id: str


async def issue(api: TestClient, subject: str | None = "rider-7") -> Phone:
    key = ec.generate_private_key(ec.SECP256R1())
    body = {"citizen": CITIZEN, "holder_jwk": public_jwk(key.public_key()),
            "holder_subject": subject}  # fmt: skip
    once = {"Idempotency-Key": f'"{time.time_ns()}"'}
    response = await api.post("/v1/identity/credentials", json=body, headers={**registry(), **once})
    assert response.status == 201, await response.text()
    issued = await response.json()
    return Phone(key, issued["credential"], issued["credential_id"])


async def ask(
    api: TestClient, claims: list[list[str]], who: str = "city-agency", purpose: str = PURPOSE
) -> Any:
    query = {"credentials": [{"id": "city_id", "format": "dc+sd-jwt",
                              "claims": [{"path": path} for path in claims]}]}  # fmt: skip
    response = await api.post(
        "/v1/identity/requests", json={"purpose": purpose, "dcql_query": query}, headers=agency(who)
    )
    return response


async def authorization(api: TestClient, claims: list[list[str]]) -> dict[str, Any]:
    response = await ask(api, claims)
    assert response.status == 201, await response.text()
    created = await response.json()
    assert created["authorization_request"]["state"] == created["request_id"]
    return dict(created["authorization_request"])


async def answer(api: TestClient, body: dict[str, Any]) -> tuple[int, Any]:
    response = await api.post("/v1/identity/presentations", json=body)
    return response.status, await response.json()


async def result(api: TestClient, request_id: str, who: str = "city-agency") -> Any:
    response = await api.get(f"/v1/identity/requests/{request_id}", headers=agency(who))
    assert response.status == 200
    return await response.json()


async def test_an_agency_gets_only_the_claims_it_asked_for_and_the_citizen_sees_the_check(
    api: TestClient,
) -> None:
    phone = await issue(api)
    request = await authorization(api, [["age_over_18"], ["address", "locality"]])
    status, problem = await answer(
        api, holder.answer(request, phone.credential, phone.key, int(time.time()))
    )
    assert status == 200, problem

    seen = await result(api, request["state"])
    assert seen["state"] == "verified"
    assert seen["claims"] == {"age_over_18": True, "address": {"locality": "Tianhe"}}
    again = await result(api, request["state"])
    assert again["claims"] is None, "disclosed claims are handed over once"
    assert again["claims_read_at"] is not None

    # The citizen reads who checked them, and checks it against the signed checkpoint.
    async def view() -> Any:
        return await (await api.get("/v1/identity/audit", headers=citizen())).json()

    logged = await eventually(
        view, lambda v: v["entries"] and v["entries"][0]["inclusion_proof"] is not None
    )
    [entry] = logged["entries"]
    assert (entry["agency"], entry["purpose"], entry["result"]) == (
        "city-agency",
        PURPOSE,
        "verified",
    )
    assert entry["claims"] == ["address.locality", "age_over_18"]
    assert "Tianhe" not in json.dumps(logged), "the log holds no disclosed value"
    checkpoint = await checkpoint_of(api, logged["checkpoint"])
    assert audit.verify_inclusion(
        base64url_decode(entry["leaf_hash"]), entry["seq"], checkpoint.size,
        [base64url_decode(h) for h in entry["inclusion_proof"]], checkpoint.root,
    )  # fmt: skip
    assert (await (await api.get("/v1/identity/audit", headers=citizen("rider-8"))).json())[
        "entries"
    ] == [], "another citizen sees none of it"


async def checkpoint_of(api: TestClient, token: str) -> audit.Checkpoint:
    """A checkpoint, verified with the issuer's published keys."""
    metadata = await (await api.get("/.well-known/jwt-vc-issuer/v1/identity")).json()
    keys = {k.kid: (k.key, k.algorithm) for k in parse_jwks(json.dumps(metadata["jwks"]))}
    return audit.read_checkpoint(token, keys=lambda header: keys.get(header.get("kid")))


async def test_an_agency_may_ask_only_what_and_why_it_is_registered_for(api: TestClient) -> None:
    birthdate = await ask(api, [["birthdate"]])
    assert birthdate.status == 403
    assert "birthdate" in (await birthdate.json())["detail"]
    assert (await ask(api, [["age_over_18"]], purpose="Curiosity")).status == 403
    assert (await ask(api, [["age_over_18"]], who="unregistered")).status == 403
    malformed = await ask(api, [[]])
    assert malformed.status == 422
    assert malformed.headers["Content-Type"].startswith("application/problem+json")


async def test_a_revoked_or_suspended_credential_is_refused_and_the_served_list_says_so(
    api: TestClient,
) -> None:
    phone = await issue(api)
    suspended = await set_status(api, phone.credential_id, "suspended")
    assert suspended["status"] == "suspended"
    await eventually(lambda: listed_status(api, suspended["status_list"]), lambda s: s == 2)
    request = await authorization(api, [["age_over_18"]])
    status, problem = await answer(
        api, holder.answer(request, phone.credential, phone.key, int(time.time()))
    )
    assert (status, problem["reason"]) == (400, "suspended")
    assert (await result(api, request["state"]))["state"] == "rejected"

    await set_status(api, phone.credential_id, "valid")
    await eventually(lambda: listed_status(api, suspended["status_list"]), lambda s: s == 0)
    request = await authorization(api, [["age_over_18"]])
    status, _ = await answer(
        api, holder.answer(request, phone.credential, phone.key, int(time.time()))
    )
    assert status == 200

    await set_status(api, phone.credential_id, "revoked")
    reinstate = await api.post(f"/v1/identity/credentials/{phone.credential_id}/status",
                               json={"status": "valid"}, headers=registry())  # fmt: skip
    assert reinstate.status == 409, "a revoked credential stays revoked"
    await eventually(lambda: listed_status(api, suspended["status_list"]), lambda s: s == 1)
    request = await authorization(api, [["age_over_18"]])
    status, problem = await answer(
        api, holder.answer(request, phone.credential, phone.key, int(time.time()))
    )
    assert (status, problem["reason"]) == (400, "revoked")


async def set_status(api: TestClient, credential_id: str, status: str) -> Any:
    response = await api.post(f"/v1/identity/credentials/{credential_id}/status",
                              json={"status": status}, headers=registry())  # fmt: skip
    assert response.status == 200, await response.text()
    return await response.json()


async def listed_status(api: TestClient, reference: dict[str, Any]) -> int | None:
    """The status the served Status List Token gives, checked as any verifier would."""
    response = await api.get(reference["uri"].removeprefix("https://city.example"))
    if response.status == 404:
        return None  # a list opened since the last rebuild is served from the next one
    assert response.headers["Content-Type"] == "application/statuslist+jwt"
    assert "max-age=1" in response.headers["Cache-Control"]
    metadata = await (await api.get("/.well-known/jwt-vc-issuer/v1/identity")).json()
    keys = {k.kid: (k.key, k.algorithm) for k in parse_jwks(json.dumps(metadata["jwks"]))}
    listed = statuslist.read_token(
        await response.text(), keys=lambda h: keys.get(h.get("kid")), uri=reference["uri"],
        now=int(time.time()),
    )  # fmt: skip
    return statuslist.status_of(listed, statuslist.Reference(reference["uri"], reference["idx"]))


Attack = Callable[[Phone, Phone, dict[str, Any]], dict[str, Any]]


def _replace_kb(body: dict[str, Any], key: ec.EllipticCurvePrivateKey, **claims: Any) -> None:
    """Re-sign the key-binding JWT of a phone's answer with ``key`` and changed claims."""
    [presentation] = body["vp_token"]["city_id"]
    head, _, kb = presentation.rpartition("~")
    payload = {**jwt.decode(kb, options={"verify_signature": False}), **claims}
    signed = jwt.encode(payload, key, algorithm="ES256", headers={"typ": "kb+jwt"})
    body["vp_token"]["city_id"] = [f"{head}~{signed}"]


def _other_holders_key(mine: Phone, other: Phone, body: dict[str, Any]) -> dict[str, Any]:
    _replace_kb(body, other.key)
    return body


def _wrong_audience(mine: Phone, other: Phone, body: dict[str, Any]) -> dict[str, Any]:
    _replace_kb(body, mine.key, aud="redirect_uri:https://evil.example/presentations")
    return body


def _wrong_nonce(mine: Phone, other: Phone, body: dict[str, Any]) -> dict[str, Any]:
    _replace_kb(body, mine.key, nonce="a-nonce-of-another-request")
    return body


def _stale_key_binding(mine: Phone, other: Phone, body: dict[str, Any]) -> dict[str, Any]:
    _replace_kb(body, mine.key, iat=int(time.time()) - 3600)
    return body


def _no_key_binding(mine: Phone, other: Phone, body: dict[str, Any]) -> dict[str, Any]:
    [presentation] = body["vp_token"]["city_id"]
    body["vp_token"]["city_id"] = [presentation.rpartition("~")[0] + "~"]
    return body


def _tampered_disclosure(mine: Phone, other: Phone, body: dict[str, Any]) -> dict[str, Any]:
    [presentation] = body["vp_token"]["city_id"]
    issuer_jwt, *disclosures, kb = presentation.split("~")
    value = json.loads(base64url_decode(disclosures[0]))
    value[2] = not value[2]
    forged = base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
    body["vp_token"]["city_id"] = ["~".join([issuer_jwt, forged, *disclosures[1:], kb])]
    return body


def _someone_elses_credential(mine: Phone, other: Phone, body: dict[str, Any]) -> dict[str, Any]:
    [presentation] = body["vp_token"]["city_id"]
    theirs = other.credential.split("~")[0]
    body["vp_token"]["city_id"] = [theirs + presentation[presentation.index("~") :]]
    return body


def _alg_none(mine: Phone, other: Phone, body: dict[str, Any]) -> dict[str, Any]:
    [presentation] = body["vp_token"]["city_id"]
    issuer_jwt, rest = presentation.split("~", 1)
    _, payload, _ = issuer_jwt.split(".")
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"dc+sd-jwt"}').rstrip(b"=").decode()
    body["vp_token"]["city_id"] = [f"{header}.{payload}.~{rest}"]
    return body


def _not_base64(mine: Phone, other: Phone, body: dict[str, Any]) -> dict[str, Any]:
    body["vp_token"]["city_id"] = ["not*base64~%%%~not-a-jwt"]
    return body


def _wrong_shape(mine: Phone, other: Phone, body: dict[str, Any]) -> dict[str, Any]:
    body["vp_token"] = {"city_id": "not a list"}
    return body


@pytest.mark.parametrize(
    ("attack", "reason"),
    [
        (_other_holders_key, "key_binding_signature"),
        (_wrong_audience, "key_binding_audience"),
        (_wrong_nonce, "key_binding_nonce"),
        (_stale_key_binding, "key_binding_stale"),
        (_no_key_binding, "key_binding_missing"),
        (_tampered_disclosure, "disclosure_unreferenced"),
        (_someone_elses_credential, "key_binding_signature"),
        (_alg_none, "unsupported_algorithm"),
        (_not_base64, "malformed"),
        (_wrong_shape, "vp_token"),
    ],
)
async def test_an_attack_is_refused_with_its_reason_and_logged_as_a_refusal(
    api: TestClient, attack: Attack, reason: str
) -> None:
    mine, other = await issue(api), await issue(api, subject="rider-8")
    request = await authorization(api, [["age_over_18"]])
    honest = holder.answer(request, mine.credential, mine.key, int(time.time()))
    status, problem = await answer(api, attack(mine, other, honest))
    assert (status, problem["reason"]) == (400, reason)
    assert problem["type"].endswith("/presentation-rejected")
    seen = await result(api, request["state"])
    assert (seen["state"], seen["reason"], seen["claims"]) == ("rejected", reason, None)
    entries = await api.app[POOL].fetch("SELECT citizen, result, reason FROM audit_log")
    assert [tuple(e) for e in entries] == [("unknown", "rejected", reason)]


async def test_a_presentation_counts_once(api: TestClient) -> None:
    phone = await issue(api)
    request = await authorization(api, [["age_over_18"]])
    body = holder.answer(request, phone.credential, phone.key, int(time.time()))
    assert (await answer(api, body))[0] == 200
    status, problem = await answer(api, body)
    assert (status, problem["reason"]) == (409, "request_answered")
    # Replayed to a new request of the same agency, its nonce is the old one.
    fresh = await authorization(api, [["age_over_18"]])
    status, problem = await answer(api, {**body, "state": fresh["state"]})
    assert (status, problem["reason"]) == (400, "key_binding_nonce")


async def test_another_agency_cannot_read_the_answer(api: TestClient) -> None:
    request = await authorization(api, [["age_over_18"]])
    response = await api.get(
        f"/v1/identity/requests/{request['state']}", headers=agency("other-agency")
    )
    assert response.status == 404


async def test_the_issuer_publishes_its_metadata_and_the_type(api: TestClient) -> None:
    phone = await issue(api)
    metadata = await (await api.get("/.well-known/jwt-vc-issuer/v1/identity")).json()
    assert metadata["issuer"] == "https://city.example/v1/identity"
    header = jwt.get_unverified_header(phone.credential.split("~")[0])
    assert header["typ"] == "dc+sd-jwt"
    assert header["kid"] in {k["kid"] for k in metadata["jwks"]["keys"]}
    payload = jwt.decode(phone.credential.split("~")[0], options={"verify_signature": False})
    assert {"iss", "vct", "cnf", "status", "exp", "nbf", "iat"} <= payload.keys()
    assert "given_name" not in payload, "personal claims travel only as disclosures"
    kind = await (await api.get("/v1/identity/types/city-id")).json()
    assert kind["vct"] == payload["vct"]


async def test_tampering_with_the_audit_log_is_found_and_named(
    api: TestClient, config: PlatformConfig, identity_service: Service
) -> None:
    phone = await issue(api)
    for _ in range(3):
        request = await authorization(api, [["age_over_18"]])
        body = holder.answer(request, phone.credential, phone.key, int(time.time()))
        assert (await answer(api, body))[0] == 200
    pool = api.app[POOL]
    await eventually(lambda: pool.fetchval("SELECT max(size) FROM audit_checkpoints"),
                     lambda size: size == 3)  # fmt: skip
    schema = identity_service.schema
    assert await auditlog.verify_database(config.database_url, schema) is None

    with pytest.raises(Exception, match="append-only"):
        await pool.execute("UPDATE audit_log SET agency = 'nobody' WHERE seq = 1")
    # Someone with more rights than the service goes around the trigger.
    async with pool.acquire() as conn:
        await conn.execute("SET session_replication_role = replica")
        await conn.execute("UPDATE audit_log SET purpose = 'changed' WHERE seq = 1")
        await conn.execute("RESET session_replication_role")
    finding = await auditlog.verify_database(config.database_url, schema)
    assert finding is not None
    assert (finding.seq, finding.problem) == (1, "changed")


async def test_our_credential_and_presentation_verify_in_the_reference_library(
    api: TestClient,
) -> None:
    phone = await issue(api)
    request = await authorization(api, [["age_over_18"], ["address", "locality"]])
    body = holder.answer(request, phone.credential, phone.key, int(time.time()))
    [presentation] = body["vp_token"]["city_id"]
    metadata = await (await api.get("/.well-known/jwt-vc-issuer/v1/identity")).json()
    keys = {k["kid"]: JWK(**k) for k in metadata["jwks"]["keys"]}
    peer = SDJWTVerifier(
        presentation,
        lambda iss, header: keys[header["kid"]],
        expected_aud=request["client_id"],
        expected_nonce=request["nonce"],
    )
    claims = peer.get_verified_payload()
    assert claims["age_over_18"] is True
    assert claims["address"] == {"locality": "Tianhe"}
    assert not {"given_name", "birthdate"} & claims.keys()
    assert (await answer(api, body))[0] == 200
    assert (await result(api, request["state"]))["claims"] == {
        "age_over_18": True, "address": {"locality": "Tianhe"}
    }  # fmt: skip


def _peer_credential(phone: ec.EllipticCurvePrivateKey, status: Any = None) -> str:
    """A city ID made by the reference library, signed with the trusted peer's key."""
    now = int(time.time())
    claims: dict[Any, Any] = {
        "iss": PEER_ISSUER, "vct": "https://city.example/v1/identity/types/city-id",
        "iat": now, "exp": now + 3600, SDObj("age_over_18"): True,
        SDObj("given_name"): "李", SDObj("resident"): True,
    }  # fmt: skip
    if status is not None:
        claims["status"] = status
    holder_key = JWK.from_pyca(phone.public_key())
    issued = SDJWTIssuer(
        claims, PEER_KEY, holder_key,
        extra_header_parameters={"typ": "dc+sd-jwt", "kid": PEER_KID},
    )  # fmt: skip
    return str(issued.sd_jwt_issuance)


def _peer_answer(
    request: dict[str, Any], credential: str, phone: ec.EllipticCurvePrivateKey
) -> dict[str, Any]:
    wallet = SDJWTHolder(credential)
    wallet.create_presentation(
        {"age_over_18": True}, request["nonce"], request["client_id"], JWK.from_pyca(phone)
    )
    return {"state": request["state"], "vp_token": {"city_id": [wallet.sd_jwt_presentation]}}


async def test_a_trusted_issuers_credential_presented_by_the_reference_holder_verifies(
    api: TestClient,
) -> None:
    phone = ec.generate_private_key(ec.SECP256R1())
    request = await authorization(api, [["age_over_18"]])
    status, problem = await answer(api, _peer_answer(request, _peer_credential(phone), phone))
    assert status == 200, problem
    assert (await result(api, request["state"]))["claims"] == {"age_over_18": True}
    # Its citizen is the holder key's thumbprint: another issuer's subject is not ours to name.
    [citizen] = await api.app[POOL].fetch("SELECT citizen FROM audit_log")
    assert citizen[0].startswith("jkt:")


async def test_a_status_reference_past_the_end_of_our_list_is_refused(api: TestClient) -> None:
    await issue(api)  # opens list 1, of IDENTITY_STATUS_LIST_SIZE entries
    first_list = "https://city.example/v1/identity/status-lists/1"
    await eventually(lambda: listed_status(api, {"uri": first_list, "idx": 0}), lambda s: s == 0)
    beyond = {"status_list": {"idx": 4096, "uri": first_list}}
    phone = ec.generate_private_key(ec.SECP256R1())
    request = await authorization(api, [["age_over_18"]])
    credential = _peer_credential(phone, beyond)
    status, problem = await answer(api, _peer_answer(request, credential, phone))
    assert (status, problem["reason"]) == (400, "status_unavailable")


async def test_a_request_for_one_accounts_holder_is_refused_to_another_and_logged_for_them(
    api: TestClient,
) -> None:
    """An agency granting an account something (transit's concession fares) asks that only the
    citizen signed in as that account answer: nobody lends their account someone else's ID."""
    grandma = await issue(api, subject="rider-grandma")
    query = {"credentials": [{"id": "city_id", "format": "dc+sd-jwt",
                              "claims": [{"path": ["age_over_18"]}]}]}  # fmt: skip

    async def request_for(subject: str) -> dict[str, Any]:
        body = {"purpose": PURPOSE, "dcql_query": query, "subject": subject}
        response = await api.post("/v1/identity/requests", json=body, headers=agency())
        assert response.status == 201, await response.text()
        return dict((await response.json())["authorization_request"])

    borrowed = await request_for("rider-grandson")
    status, problem = await answer(
        api, holder.answer(borrowed, grandma.credential, grandma.key, int(time.time()))
    )
    assert (status, problem["reason"]) == (400, "not_account_holder")
    assert (await result(api, borrowed["state"]))["claims"] is None

    own = await request_for("rider-grandma")
    status, _ = await answer(
        api, holder.answer(own, grandma.credential, grandma.key, int(time.time()))
    )
    assert status == 200
    assert (await result(api, own["state"]))["claims"] == {"age_over_18": True}

    async def log() -> Any:
        return await (await api.get("/v1/identity/audit", headers=citizen("rider-grandma"))).json()

    logged = await eventually(log, lambda v: len(v["entries"]) == 2)
    assert sorted((e["result"], e["reason"]) for e in logged["entries"]) == [
        ("rejected", "not_account_holder"),
        ("verified", None),
    ], "the citizen whose ID was presented sees both"
