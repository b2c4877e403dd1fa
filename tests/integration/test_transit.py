"""A ride as a commuter and a gate live it: the phone enrols, shows a code, the gate decides
offline with the keys it fetched, its taps are uploaded (late and twice), and the journey is
priced from the demo metro's fares and charged once, with real PostgreSQL and Redis."""

from __future__ import annotations

import base64
import json
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from datetime import time as dt_time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import OKPAlgorithm
from jwt.utils import base64url_decode

from services.transit import ridecode
from services.transit.denylist import Delta, DenyList
from services.transit.events import FareDue
from services.transit.fares import FareEngine, Journey, Leg
from services.transit.feed import DEMO_FEED, load
from services.transit.gate import GateVerifier
from services.transit.handlers import FARES
from services.wallet.events import FareDebitFailed, TopUpCompleted
from shared.config import PlatformConfig
from shared.events import decode
from shared.service import BUS, POOL, Service, create_app
from tests.support import behind_the_gateway, eventually
from tests.support import gateway_token as token


@pytest.fixture
async def api(config: PlatformConfig, transit_service: Service) -> AsyncIterator[TestClient]:
    async with TestClient(
        TestServer(create_app(transit_service, behind_the_gateway(config)))
    ) as client:
        yield client


async def enrol(api: TestClient, rider: str) -> tuple[Ed25519PrivateKey, bytes]:
    phone = Ed25519PrivateKey.generate()
    jwk = json.loads(OKPAlgorithm.to_jwk(phone.public_key()))
    response = await api.post("/v1/transit/credentials", json={"device_jwk": jwk},
                              headers=token(rider, "transit:ride"))  # fmt: skip
    assert response.status == 201, await response.text()
    return phone, base64url_decode((await response.json())["credential"])


async def gate(api: TestClient, station: str) -> GateVerifier:
    """A gate at ``station`` with the issuer keys it fetched while the network was up."""
    keys = (await (await api.get("/v1/transit/issuer-keys")).json())["keys"]
    issuers = {
        k["kid"]: ridecode.load_public_key(ridecode.ED25519, base64url_decode(k["x"])) for k in keys
    }
    return GateVerifier(station=station, issuer_keys=issuers, deny=DenyList())


def tap(decision: Any, station: str, direction: str, at: datetime) -> dict[str, Any]:
    return {"tap_id": str(uuid.uuid4()), "station": station, "direction": direction,
            "at": at.isoformat(), "gate": f"{station}-01",
            "rider": base64.b64encode(decision.rider).decode(),
            "credential_id": base64.b64encode(decision.credential_id).decode()}  # fmt: skip


async def upload(api: TestClient, taps: list[dict[str, Any]]) -> int:
    response = await api.post("/v1/transit/taps", json={"taps": taps},
                              headers=token("station-0001", "transit:taps"))  # fmt: skip
    return response.status


async def statements(api: TestClient) -> list[FareDue]:
    """What transit told the wallet each journey owes, in the order it told it."""
    rows = await api.app[POOL].fetch("SELECT body FROM outbox ORDER BY seq")
    return [msgspec.json.decode(decode(bytes(r["body"])).payload, type=FareDue) for r in rows]


async def test_a_ride_opens_gates_offline_and_is_charged_once(api: TestClient) -> None:
    phone, credential = await enrol(api, "rider-1")
    west_gate, old_town = await gate(api, "WG"), await gate(api, "OT")
    now = int(time.time())
    code = ridecode.make_code(credential, device_key=phone, timestamp=now, counter=1)
    entered = west_gate.scan(code, now=now, direction="entry")
    assert (entered.open, entered.reason) == (True, "ok")
    assert west_gate.scan(code, now=now + 1, direction="entry").reason == "replay"
    later = ridecode.make_code(credential, device_key=phone, timestamp=now + 1200, counter=2)
    left = old_town.scan(later, now=now + 1200, direction="exit")
    assert left.open

    start = datetime.now(UTC) - timedelta(minutes=30)
    taps = [
        tap(entered, "WG", "entry", start),
        tap(left, "OT", "exit", start + timedelta(minutes=20)),
    ]
    assert await upload(api, taps[1:]) == 200  # the exit gate was online first
    assert await upload(api, taps) == 200
    assert await upload(api, taps) == 200  # and the entry gate sent its batch twice

    [charge] = await statements(api)
    assert (charge.rider, charge.operator, charge.amount, charge.currency, charge.version) == (
        "rider-1",
        "metro",
        200,
        "CNY",
        1,
    )
    [journey] = await journeys(api, "rider-1")
    assert (journey["kind"], journey["entry"], journey["exit"]) == ("complete", "WG", "OT")
    assert (journey["amount_minor"], journey["charged_minor"]) == (200, 200)
    assert await journeys(api, "rider-2") == [], "another rider sees none of it"


async def journeys(api: TestClient, rider: str) -> list[dict[str, Any]]:
    response = await api.get("/v1/transit/journeys", headers=token(rider, "transit:ride"))
    return list((await response.json())["journeys"])


async def test_an_exit_alone_is_charged_the_most_it_could_cost_and_refunded_when_its_entry_comes(
    api: TestClient,
) -> None:
    phone, credential = await enrol(api, "rider-3")
    exit_gate, entry_gate = await gate(api, "OT"), await gate(api, "WG")
    now = int(time.time())
    code = ridecode.make_code(credential, device_key=phone, timestamp=now, counter=1)
    entered = entry_gate.scan(code, now=now, direction="entry")
    later = ridecode.make_code(credential, device_key=phone, timestamp=now + 60, counter=2)
    left = exit_gate.scan(later, now=now + 60, direction="exit")
    assert (entered.open, left.open) == (True, True)
    exited_at = datetime.now(UTC) - timedelta(hours=5)  # longer ago than any journey lasts
    assert await upload(api, [tap(left, "OT", "exit", exited_at)]) == 200
    [alone] = await statements(api)
    assert (alone.amount, alone.version) == (max_fare_cny_minor(), 1)

    # The entry gate was offline; its upload arrives at last: the journey was a short one.
    entry_tap = tap(entered, "WG", "entry", exited_at - timedelta(minutes=20))
    assert await upload(api, [entry_tap]) == 200
    assert await upload(api, [entry_tap]) == 200  # and again: nothing more is stated
    _, superseded, whole = await statements(api)
    assert (superseded.journey_id, superseded.version, superseded.amount) == (
        alone.journey_id,
        2,
        0,
    )
    assert (whole.version, whole.amount) == (1, 200)
    [journey] = await journeys(api, "rider-3")
    assert (journey["kind"], journey["amount_minor"], journey["charged_minor"]) == (
        "complete",
        200,
        200,
    )


async def test_the_daily_cap_waives_what_is_over_it_and_a_late_journey_moves_the_waiver(
    api: TestClient,
) -> None:
    phone, credential = await enrol(api, "rider-4")
    entry_gate = await gate(api, "WG")
    now = int(time.time())
    code = ridecode.make_code(credential, device_key=phone, timestamp=now, counter=1)
    decision = entry_gate.scan(code, now=now, direction="entry")  # the rider's ids, for taps
    origin, destination, fare = dearest_ride()
    [daily_cap] = [
        c.amount_minor for c in FEED.caps if (c.rider_category_id, c.period) == ("adult", "day")
    ]
    assert daily_cap == 3 * fare, "the demo feed's adult day cap is three of its dearest rides"
    yesterday = datetime.now(FEED.timezone).date() - timedelta(days=1)

    def ride(hour: int) -> list[dict[str, Any]]:
        start = datetime.combine(yesterday, dt_time(hour), FEED.timezone)
        return [tap(decision, origin, "entry", start),
                tap(decision, destination, "exit", start + timedelta(minutes=30))]  # fmt: skip

    assert await upload(api, [t for hour in (10, 11, 12, 13) for t in ride(hour)]) == 200
    rides = sorted(await journeys(api, "rider-4"), key=lambda j: j["started_at"])
    assert [(j["amount_minor"], j["charged_minor"]) for j in rides] == [(fare, fare)] * 3 + [
        (fare, 0)
    ]
    assert [s.amount for s in await statements(api)] == [fare] * 3

    # A gate that was offline all morning uploads an earlier ride: the day's third charged
    # ride is now its fourth, and is refunded.
    assert await upload(api, ride(9)) == 200
    rides = sorted(await journeys(api, "rider-4"), key=lambda j: j["started_at"])
    assert [j["charged_minor"] for j in rides] == [fare] * 3 + [0, 0]
    *_, refund, charge = await statements(api)
    assert (refund.journey_id, refund.version, refund.amount) == (
        uuid.UUID(rides[3]["journey_id"]),
        2,
        0,
    )
    assert (charge.journey_id, charge.amount) == (uuid.UUID(rides[0]["journey_id"]), fare)


FEED = load(DEMO_FEED)


def dearest_ride() -> tuple[str, str, int]:
    """Two stations of the demo metro with its dearest adult fare between them, at 10:00."""
    engine, at = FareEngine(FEED), datetime(2026, 1, 5, 10)
    quotes = (
        (a, b, engine.price(Journey((Leg("L1", a, b, at, at),), None, "qr")).amount_minor or 0)
        for a in FEED.stops
        for b in FEED.stops
    )
    return max(quotes, key=lambda q: q[2])


def max_fare_cny_minor() -> int:
    """The demo metro's dearest fare (4 zones), read from its own feed."""
    return max(p.amount_minor for group in FEED.products.values() for p in group)


@pytest.mark.parametrize(
    "body",
    [{"taps": []}, {"taps": [{"tap_id": "x"}]}, {"nothing": 1}],
)
async def test_a_bad_upload_is_refused_with_a_problem(api: TestClient, body: Any) -> None:
    response = await api.post("/v1/transit/taps", json=body,
                              headers=token("station-0001", "transit:taps"))  # fmt: skip
    assert response.status in (400, 422)
    assert response.headers["Content-Type"].startswith("application/problem+json")


async def deny_list(api: TestClient, since: int | None = None) -> tuple[int, bytes]:
    query = "" if since is None else f"?since={since}"
    response = await api.get(f"/v1/transit/deny-list{query}",
                             headers=token("station-0001", "transit:taps"))  # fmt: skip
    assert response.status in (200, 204)
    return int(response.headers["Deny-List-Version"]), await response.read()


async def test_a_rider_in_debt_is_denied_at_the_gates_until_they_top_up(api: TestClient) -> None:
    phone, credential = await enrol(api, "rider-9")
    bus, pool = api.app[BUS], api.app[POOL]

    async def wallet_says(event: Any) -> None:  # as the wallet would, over the bus
        async with pool.acquire() as conn, conn.transaction():
            await bus.publish(conn, "rider-9", event)

    [credential_state] = (await standing(api, "rider-9"))["credentials"]
    assert (credential_state["category"], credential_state["state"]) == ("adult", "valid")
    assert (await standing(api, "rider-9"))["denied"] is False
    account = uuid.uuid4()
    await wallet_says(FareDebitFailed(charge_id=uuid.uuid4(), rider="rider-9", account_id=account,
                                      amount=300, currency="CNY", available=100))  # fmt: skip
    version, snapshot = await eventually(lambda: deny_list(api), lambda d: d[0] == 1,
                                         what="the rider on the deny list")  # fmt: skip
    told = await standing(api, "rider-9")
    assert told["denied"] is True
    assert "top-up" in told["denied_because"]
    assert await standing(api, "rider-10") == {
        "credentials": [],
        "denied": False,
        "denied_because": None,
    }, "a rider sees only their own"
    station = await gate(api, "WG")
    station.replace_deny_list(DenyList.load(snapshot))
    now = int(time.time())
    code = ridecode.make_code(credential, device_key=phone, timestamp=now, counter=1)
    assert station.scan(code, now=now).reason == "denied"

    await wallet_says(TopUpCompleted(order_id=uuid.uuid4(), account_id=account, rider="rider-9",
                                     amount=5000, currency="CNY", provider="sandbox"))  # fmt: skip
    _, delta = await eventually(lambda: deny_list(api, since=version), lambda d: d[0] == 2,
                                what="the top-up lifting the denial")  # fmt: skip
    assert station.apply_delta(Delta.decode(delta))
    again = ridecode.make_code(credential, device_key=phone, timestamp=now + 5, counter=2)
    assert station.scan(again, now=now + 5).open
    assert (await deny_list(api, since=2))[1] == b"", "nothing new: 204"
    assert (await standing(api, "rider-9"))["denied"] is False


async def standing(api: TestClient, rider: str) -> dict[str, Any]:
    response = await api.get("/v1/transit/credentials", headers=token(rider, "transit:ride"))
    assert response.status == 200
    return dict(await response.json())


async def test_the_service_describes_every_route_it_serves(api: TestClient) -> None:
    from openapi_spec_validator import validate

    from services.transit.app import ROUTES

    document = await (await api.get("/v1/transit/openapi.json")).json()
    validate(document)
    described = {
        (method.upper(), path) for path, ops in document["paths"].items() for method in ops
    }
    assert described == {(method, path) for method, path, _ in ROUTES}


async def test_one_upload_of_many_riders_taps_prices_each_riders_own_journeys(
    api: TestClient,
) -> None:
    origin, destination, fare = dearest_ride()
    start, taps, riders = datetime.now(UTC) - timedelta(hours=1), [], {}
    for n in range(3):
        phone, credential = await enrol(api, f"rider-many-{n}")
        now = int(time.time())
        code = ridecode.make_code(credential, device_key=phone, timestamp=now, counter=1)
        decision = (await gate(api, origin)).scan(code, now=now, direction="entry")
        rides = n + 1  # rider n rides n + 1 times
        for ride in range(rides):
            at = start + timedelta(minutes=10 * ride)
            taps += [tap(decision, origin, "entry", at),
                     tap(decision, destination, "exit", at + timedelta(minutes=5))]  # fmt: skip
        riders[f"rider-many-{n}"] = rides
    assert await upload(api, taps[::-1]) == 200  # in any order
    for rider, rides in riders.items():
        assert [j["charged_minor"] for j in await journeys(api, rider)] == [fare] * rides
    stated = await statements(api)
    assert {r: sum(s.amount for s in stated if s.rider == r) for r in riders} == {
        r: fare * rides for r, rides in riders.items()
    }


async def test_a_republished_feed_prices_what_comes_next_and_a_broken_one_keeps_the_last_good(
    tmp_path: Path,
    config: PlatformConfig,
    transit_service: Service,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    feed = tmp_path / "feed"
    shutil.copytree(DEMO_FEED, feed)
    monkeypatch.setenv("TRANSIT_FEED", str(feed))
    products = (feed / "fare_products.txt").read_text()
    async with TestClient(
        TestServer(create_app(transit_service, behind_the_gateway(config)))
    ) as api:
        fares = api.app[FARES]
        good = fares.pricer
        (feed / "fare_products.txt").write_text(products.replace("2.00,CNY", "two,CNY", 1))
        await fares.check()
        assert fares.pricer is good, "a broken feed is refused; the last good one prices"
        assert 'transit_feed_reloads_total{outcome="refused"} 1.0' in await metrics(api)

        (feed / "fare_products.txt").write_text(
            products.replace("adult,2.00,CNY", "adult,2.50,CNY")
        )
        await fares.check()
        assert fares.pricer is not good
        phone, credential = await enrol(api, "rider-republished")
        now = int(time.time())
        code = ridecode.make_code(credential, device_key=phone, timestamp=now, counter=1)
        decision = (await gate(api, "WG")).scan(code, now=now, direction="entry")
        start = datetime.now(UTC) - timedelta(minutes=30)
        taps = [
            tap(decision, "WG", "entry", start),
            tap(decision, "OT", "exit", start + timedelta(minutes=20)),
        ]
        assert await upload(api, taps) == 200
        [journey] = await journeys(api, "rider-republished")
        assert journey["amount_minor"] == 250
        assert 'transit_feed_reloads_total{outcome="loaded"} 1.0' in await metrics(api)


async def metrics(api: TestClient) -> str:
    return await (await api.get("/metrics")).text()
