"""`cardless gate` against the real transit behind the real gateway, on real sockets: the
station decides offline with what it synced, keeps its taps on disk while the network is down
and uploads them when it returns, once however often a batch is sent; a rider put on the deny
list is refused after the next sync; a tap transit refuses is set aside, not blocking the rest."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import sys
import time
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from jwt.utils import base64url_decode

from services.gateway import demo
from services.gateway.clients import parse_clients
from services.gateway.config import DEFAULT_LIMITS
from services.gateway.ratelimit import Limit
from services.gateway.tokens import CLIENT_ASSERTION_TYPE, CLIENT_CREDENTIALS
from services.transit import ridecode, store
from services.transit.station import Bank, StationSettings, run
from services.transit.uplink import TAPS, GateClient, Uplink
from shared.config import PlatformConfig
from shared.events import decode
from shared.service import POOL, Service
from tests.gateway_city import Phone, behind_a_gateway
from tests.support import REPO, eventually, free_port


@dataclass
class City:
    """Transit behind the gateway, as a station and a rider's phone reach them."""

    gateway_url: str
    transit: web.Application
    http: aiohttp.ClientSession
    data_dir: Path  # the city's: the gate client's key, the stations' disks

    def station(self, name: str, *, gateway_url: str | None = None) -> StationSettings:
        return StationSettings(station=name, gateway_url=gateway_url or self.gateway_url,
                               data_dir=self.data_dir, flush_s=5.0)  # fmt: skip

    def uplink(self, bank: Bank, gateway_url: str | None = None) -> Uplink:
        """The station's uplink, to the gateway (or to ``gateway_url``)."""
        client = GateClient(gateway_url or self.gateway_url, self.data_dir, "station-0001")
        return Uplink(self.http, client, bank.verifier, bank.buffer,
                      batch=bank.settings.batch, synced=bank.save)  # fmt: skip

    async def gate_token(self) -> str:
        """The station's token, as its client gets it (for a request the test sends itself)."""
        token_url = f"{self.gateway_url}/oauth/token"
        form = {"grant_type": CLIENT_CREDENTIALS, "client_assertion_type": CLIENT_ASSERTION_TYPE,
                "client_assertion": demo.client_assertion(self.data_dir, "station-0001",
                                                          token_url)}  # fmt: skip
        async with self.http.post(token_url, data=form) as answer:
            assert answer.status == 200, await answer.text()
            return str((await answer.json())["access_token"])

    async def transit_rows(self, query: str, *args: Any) -> list[Any]:
        return list(await self.transit[POOL].fetch(query, *args))


async def running(
    config: PlatformConfig, transit: Service, gateway: Service, data_dir: Path, **settings: Any
) -> AsyncIterator[City]:
    clients = parse_clients(demo.registry(data_dir).read_text())
    async with contextlib.AsyncExitStack() as stack:
        gateway_url, apps = await behind_a_gateway(
            stack, config, gateway, {"transit": transit}, clients, **settings
        )
        http = await stack.enter_async_context(aiohttp.ClientSession())
        yield City(gateway_url, apps["transit"], http, data_dir)


@pytest.fixture
async def city(
    config: PlatformConfig, transit_service: Service, gateway_service: Service, tmp_path: Path
) -> AsyncIterator[City]:
    async for running_city in running(config, transit_service, gateway_service, tmp_path):
        yield running_city


class Rider:
    """A commuter's phone: signed in at the gateway (DPoP), enrolled for a ride credential."""

    def __init__(self, city: City) -> None:
        self.city, self.phone = city, Phone()
        self.token = self.subject = ""
        self.credential = b""
        self.counter = 0

    async def enrol(self) -> Rider:
        self.token = await self.phone.signed_in(self.city.http, self.city.gateway_url)
        self.subject = jwt.decode(self.token, options={"verify_signature": False})["sub"]
        answer_body = await self.call("POST", "/v1/transit/credentials",
                                      json={"device_jwk": self.phone.jwk})  # fmt: skip
        self.credential = base64url_decode(answer_body["credential"])
        return self

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        url = f"{self.city.gateway_url}{path}"
        proof = self.phone.proof(method, url, self.token, now())
        headers = {"Authorization": f"DPoP {self.token}", "DPoP": proof}
        async with self.city.http.request(method, url, headers=headers, **kwargs) as answer:
            assert answer.status in (200, 201), await answer.text()
            return await answer.json()

    def line(self, direction: str) -> str:
        """What the gate's reader hands over for the code the phone shows now."""
        self.counter += 1
        code = ridecode.make_code(self.credential, device_key=self.phone.key,
                                  timestamp=now(), counter=self.counter)  # fmt: skip
        return f"{direction} {base64.urlsafe_b64encode(code).decode().rstrip('=')}"

    async def journeys(self) -> list[dict[str, Any]]:
        return list((await self.call("GET", "/v1/transit/journeys"))["journeys"])


def now() -> int:
    return int(time.time())


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens: the network is down


async def synced_then_offline(city: City, name: str) -> Bank:
    """A station that synced while the network was up and restarted with it down."""
    online = Bank.open(city.station(name))
    assert await city.uplink(online).try_sync()
    online.close()
    return Bank.open(city.station(name, gateway_url=closed_port_url()))


async def fare_statements(city: City) -> list[str]:
    """The types of the events transit wrote for the wallet (its outbox), in order."""
    rows = await city.transit_rows("SELECT body FROM outbox ORDER BY seq")
    return [decode(bytes(row["body"])).type for row in rows]


async def test_a_station_decides_offline_keeps_its_taps_and_uploads_them_when_the_network_returns(
    city: City,
) -> None:
    rider = await Rider(city).enrol()
    west, old_town = await synced_then_offline(city, "WG"), await synced_then_offline(city, "OT")
    for bank, direction in ((west, "entry"), (old_town, "exit")):
        assert bank.decide(rider.line(direction))["open"]
        uplink = city.uplink(bank, bank.settings.gateway_url)
        assert not await uplink.try_sync(), "the network is down"
        assert await uplink.upload_once() is not None, "an upload that failed: retry later"
        assert len(bank.buffer) == 1, "the tap stays on disk"
    assert await city.transit_rows("SELECT tap_id FROM taps") == []

    for bank in (west, old_town):  # the network returns
        assert await city.uplink(bank).upload_once() is None
        assert len(bank.buffer) == 0
    [journey] = await eventually(rider.journeys, lambda found: len(found) == 1,
                                 what="the journey priced")  # fmt: skip
    assert (journey["kind"], journey["entry"], journey["exit"]) == ("complete", "WG", "OT")
    assert journey["amount_minor"] == 200
    assert len(await fare_statements(city)) == 1


async def test_a_batch_sent_again_after_a_crash_before_marking_makes_one_journey_and_one_charge(
    city: City,
) -> None:
    rider = await Rider(city).enrol()
    online = Bank.open(city.station("WG"))
    assert await city.uplink(online).try_sync()
    assert online.decide(rider.line("entry"))["open"]
    assert online.decide(rider.line("exit"))["open"]
    batch = online.buffer.oldest(500)
    # The batch went out and transit took it, then the station died before marking it sent.
    body = b'{"taps":[' + b",".join(tap.body for tap in batch) + b"]}"
    headers = {"Authorization": f"Bearer {await city.gate_token()}",
               "Content-Type": "application/json"}  # fmt: skip
    async with city.http.post(f"{city.gateway_url}{TAPS}", data=body, headers=headers) as sent:
        assert sent.status == 200
    with warnings.catch_warnings():  # Python 3.13 warns of a connection never closed
        warnings.simplefilter("ignore", ResourceWarning)
        del online  # no close: the crash

    restarted = Bank.open(city.station("WG"))
    assert [tap.tap_id for tap in restarted.buffer.oldest(500)] == [t.tap_id for t in batch]
    assert await city.uplink(restarted).upload_once() is None  # sent again, and marked
    assert len(restarted.buffer) == 0
    taps = await city.transit_rows("SELECT tap_id FROM taps")
    assert sorted(str(row["tap_id"]) for row in taps) == sorted(t.tap_id for t in batch)
    [journey] = await rider.journeys()
    assert (journey["kind"], journey["amount_minor"]) == ("complete", 200)
    assert len(await fare_statements(city)) == 1, "charged once"


async def test_a_rider_put_on_the_deny_list_is_refused_after_the_next_sync(city: City) -> None:
    rider = await Rider(city).enrol()
    bank = Bank.open(city.station("WG"))
    uplink = city.uplink(bank)
    assert await uplink.try_sync()
    assert bank.decide(rider.line("exit"))["open"]
    async with city.transit[POOL].acquire() as conn, conn.transaction():
        pseudonym = await store.pseudonym_of(conn, rider.subject, datetime.now(UTC))
        version = await store.set_denied(conn, pseudonym, True, "fare_debit_failed",
                                         datetime.now(UTC))  # fmt: skip
    assert bank.decide(rider.line("exit"))["open"], "not before the gate hears of it"

    assert await uplink.try_sync()
    assert bank.verifier.deny.version == version
    assert bank.decide(rider.line("entry")) == {"gate": "WG-01", "direction": "entry",
                                                "open": False, "reason": "denied"}  # fmt: skip
    bank.close()
    restarted = Bank.open(city.station("WG", gateway_url=closed_port_url()))
    assert restarted.decide(rider.line("entry"))["reason"] == "denied", "kept on disk"


async def test_a_tap_transit_refuses_is_set_aside_and_the_rest_of_its_batch_uploaded(
    city: City,
) -> None:
    rider = await Rider(city).enrol()
    bank = Bank.open(city.station("WG"))
    uplink = city.uplink(bank)
    assert await uplink.try_sync()
    assert bank.decide(rider.line("entry"))["open"]
    [good] = bank.buffer.oldest(1)
    broken = json.loads(good.body) | {"tap_id": "not-a-uuid"}
    bank.buffer.add("not-a-uuid", json.dumps(broken).encode())
    assert bank.decide(rider.line("exit"))["open"]

    assert await uplink.upload_once() is None
    assert len(bank.buffer) == 0
    assert bank.buffer.set_aside_count() == 1
    assert len(await city.transit_rows("SELECT tap_id FROM taps")) == 2


@pytest.fixture
async def throttled(
    config: PlatformConfig, transit_service: Service, gateway_service: Service, tmp_path: Path
) -> AsyncIterator[City]:
    """The city with room for one request of the taps class a minute, per client."""
    limits = DEFAULT_LIMITS | {"taps": Limit(requests=1, period_s=60)}
    async for running_city in running(
        config, transit_service, gateway_service, tmp_path, limits=limits
    ):
        yield running_city


async def test_a_429_keeps_the_taps_and_the_station_waits_as_long_as_it_is_told(
    throttled: City,
) -> None:
    rider = await Rider(throttled).enrol()
    bank = Bank.open(throttled.station("WG"))
    uplink = throttled.uplink(bank)
    await uplink.try_sync()  # the deny list is of the taps class: this takes the one request
    assert bank.decide(rider.line("entry"))["open"]
    wait = await uplink.upload_once()
    assert wait is not None
    assert 1 <= wait <= 60
    assert len(bank.buffer) == 1


async def test_cardless_gate_decides_each_line_and_uploads_before_it_exits(city: City) -> None:
    rider = await Rider(city).enrol()
    entry, frame = rider.line("entry"), city.data_dir / "frame.png"
    frame.write_bytes(ridecode.render_png(base64url_decode(rider.line("exit").split()[1])))
    lines = f"{entry}\nnot a code\nexit @{frame}\n"
    gate = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shared.cli", "gate", "--station", "WG", "--gateway",
        city.gateway_url, "--data-dir", str(city.data_dir), cwd=REPO,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(gate.communicate(lines.encode()), 60)
    assert gate.returncode == 0, err.decode()
    decided = [json.loads(line) for line in out.decode().splitlines()]
    assert [(d["gate"], d["open"], d["reason"]) for d in decided] == [
        ("WG-01", True, "ok"),
        ("WG-02", False, "format"),
        ("WG-03", True, "ok"),
    ]
    assert len(await city.transit_rows("SELECT tap_id FROM taps")) == 2, "uploaded at the end"
    [journey] = await rider.journeys()
    assert (journey["entry"], journey["exit"]) == ("WG", "WG")


async def test_the_station_run_stops_on_request_and_saves_what_it_learnt(city: City) -> None:
    rider = await Rider(city).enrol()
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    stopping, out = asyncio.Event(), io.StringIO()
    running_station = asyncio.create_task(run(city.station("OT"), lines, out, stopping))
    await lines.put(rider.line("entry"))
    await eventually(_async(out.getvalue), lambda text: text.count("\n") == 1,
                     what="the decision printed")  # fmt: skip
    stopping.set()
    await lines.put(None)
    assert await running_station == 0
    assert json.loads(out.getvalue())["open"]
    restarted = Bank.open(city.station("OT", gateway_url=closed_port_url()))
    assert restarted.verifier.issuer_kids, "the keys it synced are on disk"
    assert restarted.decide(rider.line("entry"))["reason"] == "passback"
    assert len(restarted.buffer) == 0, "its tap was uploaded before it stopped"


def _async(read: Any) -> Any:
    async def probe() -> Any:
        return read()

    return probe
