"""Concession fares proven with the city ID, across the city's real parts over real sockets:
the rider asks transit, transit asks identity through the gateway as an agency, the phone
answers identity, and the concession is granted only for the rider's own ID with the claim
true; a senior's next credential is a senior's and their ride is priced as one."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.utils import base64url_decode

from services.gateway import demo
from services.gateway.client import GatewayClient
from services.gateway.clients import parse_clients
from services.gateway.tokens import CLIENT_ASSERTION_TYPE, CLIENT_CREDENTIALS
from services.identity import holder
from services.identity.credentials import public_jwk
from services.transit import ridecode
from services.transit.denylist import DenyList
from services.transit.gate import GateVerifier
from services.transit.uplink import issuer_keys
from shared.config import PlatformConfig
from shared.service import Service
from tests.gateway_city import Phone, behind_a_gateway
from tests.support import free_port

SENIOR = {**holder.DEMO_CITIZEN, "birthdate": "1950-03-02", "id_number": "GZ-0000-0065"}


@dataclasses.dataclass
class City:
    gateway_url: str
    http: aiohttp.ClientSession
    data_dir: Path


@pytest.fixture
async def city(
    config: PlatformConfig,
    transit_service: Service,
    identity_service: Service,
    gateway_service: Service,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[City]:
    gateway_port = free_port()
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    clients = parse_clients(demo.registry(tmp_path).read_text())
    monkeypatch.setenv("TRANSIT_GATEWAY_URL", gateway_url)
    monkeypatch.setenv(
        "TRANSIT_IDENTITY_KEY", f"@{demo.client_key_path(tmp_path, 'metro-concessions')}"
    )
    monkeypatch.setenv("IDENTITY_AGENCIES", json.dumps(holder.DEMO_AGENCIES))
    monkeypatch.setenv("IDENTITY_PUBLIC_URL", gateway_url)
    monkeypatch.setenv("IDENTITY_STATUS_LIST_SIZE", "4096")
    async with contextlib.AsyncExitStack() as stack:
        services = {"transit": transit_service, "identity": identity_service}
        await behind_a_gateway(stack, config, gateway_service, services, clients, port=gateway_port)
        http = await stack.enter_async_context(aiohttp.ClientSession())
        yield City(gateway_url, http, tmp_path)


class Rider:
    """A rider's phone: signed in at the gateway (DPoP), holding a city ID for its account."""

    def __init__(self, city: City) -> None:
        self.city, self.phone = city, Phone()
        self.id_key = ec.generate_private_key(ec.SECP256R1())
        self.token = self.subject = self.city_id = ""

    async def sign_in(self) -> Rider:
        self.token = await self.phone.signed_in(self.city.http, self.city.gateway_url)
        self.subject = str(jwt.decode(self.token, options={"verify_signature": False})["sub"])
        return self

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        url = f"{self.city.gateway_url}{path}"
        proof = self.phone.proof(method, url, self.token, now())
        headers = {"Authorization": f"DPoP {self.token}", "DPoP": proof}
        async with self.city.http.request(method, url, headers=headers, json=body) as answer:
            return answer.status, await answer.json(content_type=None)

    async def enrol(self, category: str) -> tuple[int, Any]:
        body = {"device_jwk": self.phone.jwk, "category": category}
        return await self.call("POST", "/v1/transit/credentials", body)

    async def issued_id(self, citizen: dict[str, Any], holder_subject: str) -> None:
        """The registry office issues a city ID bound to this phone, for ``holder_subject``."""
        token_url = f"{self.city.gateway_url}/oauth/token"
        registry = demo.client_assertion(self.city.data_dir, "city-registry", token_url)
        form = {"grant_type": CLIENT_CREDENTIALS, "client_assertion": registry,
                "client_assertion_type": CLIENT_ASSERTION_TYPE}  # fmt: skip
        async with self.city.http.post(token_url, data=form) as answer:
            token = (await answer.json())["access_token"]
        body = {"citizen": citizen, "holder_jwk": public_jwk(self.id_key.public_key()),
                "holder_subject": holder_subject}  # fmt: skip
        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": f'"{time.time_ns()}"'}
        url = f"{self.city.gateway_url}/v1/identity/credentials"
        async with self.city.http.post(url, json=body, headers=headers) as answer:
            assert answer.status == 201, await answer.text()
            self.city_id = (await answer.json())["credential"]

    async def prove(self, category: str) -> tuple[int, Any]:
        """Ask transit for ``category``, answer identity with the phone, claim it."""
        status, asked = await self.call("POST", "/v1/transit/concessions", {"category": category})
        assert status == 201, asked
        request = asked["authorization_request"]
        presented = holder.answer(request, self.city_id, self.id_key, now())
        async with self.city.http.post(request["response_uri"], json=presented) as answer:
            await answer.read()
        return await self.call("POST", f"/v1/transit/concessions/{asked['concession_id']}/claim")


def now() -> int:
    return int(time.time())


async def test_a_senior_proves_it_with_their_id_and_rides_as_one(city: City) -> None:
    rider = await Rider(city).sign_in()
    await rider.issued_id(SENIOR, rider.subject)
    status, refused = await rider.enrol("senior")
    assert (status, refused["type"].rsplit("/", 1)[-1]) == (403, "category-needs-proof")

    assert await rider.prove("senior") == (200, {"category": "senior", "granted": True})
    status, enrolled = await rider.enrol("senior")
    assert (status, enrolled["category"]) == (201, "senior")

    # A gate reads the category from the credential; the ride is priced at the senior fare.
    async with city.http.get(f"{city.gateway_url}/v1/transit/issuer-keys") as answer:
        gate = GateVerifier(
            station="WG", issuer_keys=issuer_keys(await answer.read()), deny=DenyList()
        )
    code = ridecode.make_code(base64url_decode(enrolled["credential"]), device_key=rider.phone.key,
                              timestamp=now(), counter=1)  # fmt: skip
    decision = gate.scan(code, now=now(), direction="entry")
    assert (decision.open, decision.category) == (True, "senior")
    start = datetime.now(UTC) - timedelta(minutes=30)
    taps = [{"tap_id": str(uuid.uuid4()), "station": station, "direction": direction,
             "at": (start + timedelta(minutes=m)).isoformat(),
             "rider": base64.b64encode(decision.rider or b"").decode(),
             "credential_id": base64.b64encode(decision.credential_id or b"").decode()}
            for station, direction, m in (("WG", "entry", 0), ("OT", "exit", 20))]  # fmt: skip
    station = GatewayClient(city.http, city.gateway_url, functools.partial(
        demo.client_assertion, city.data_dir, "station-0001"))  # fmt: skip
    uploaded = await station.request(
        "POST", "/v1/transit/taps", json.dumps({"taps": taps}).encode()
    )
    assert uploaded.status == 200, uploaded.body
    _, ridden = await rider.call("GET", "/v1/transit/journeys")
    [journey] = ridden["journeys"]
    assert (journey["category"], journey["amount_minor"], journey["charged_minor"]) == (
        "senior",
        0,
        0,
    )

    _, log = await rider.call("GET", "/v1/identity/audit")
    assert [(e["agency"], e["claims"], e["result"]) for e in log["entries"]] == [
        ("metro-concessions", ["age_over_65"], "verified")
    ], "the citizen sees transit's check in their log"


async def test_a_concession_is_refused_without_the_claim_or_with_someone_elses_id(
    city: City,
) -> None:
    young = await Rider(city).sign_in()
    await young.issued_id(holder.DEMO_CITIZEN, young.subject)  # born 1990
    status, problem = await young.prove("senior")
    assert (status, problem["reason"]) == (403, "not_eligible")

    grandson = await Rider(city).sign_in()
    grandma = await Rider(city).sign_in()
    await grandma.issued_id(SENIOR, grandma.subject)
    grandson.city_id, grandson.id_key = grandma.city_id, grandma.id_key  # her phone, lent
    status, problem = await grandson.prove("senior")
    assert (status, problem["reason"]) == (403, "not_account_holder")
    assert (await grandson.enrol("senior"))[0] == 403

    status, problem = await young.call("POST", "/v1/transit/concessions", {"category": "adult"})
    assert status == 422


async def test_a_claim_before_the_phone_answered_is_pending_and_another_riders_is_not_found(
    city: City,
) -> None:
    rider, other = await Rider(city).sign_in(), await Rider(city).sign_in()
    status, asked = await rider.call("POST", "/v1/transit/concessions", {"category": "senior"})
    assert status == 201
    claim = f"/v1/transit/concessions/{asked['concession_id']}/claim"
    assert (await rider.call("POST", claim))[0] == 409
    assert (await other.call("POST", claim))[0] == 404
