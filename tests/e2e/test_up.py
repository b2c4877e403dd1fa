"""`cardless up` as a newcomer runs it: real processes, embedded servers, the gateway in front
of the wallet and the README's first request through it, Ctrl-C, and again."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from jwt.algorithms import OKPAlgorithm
from jwt.utils import base64url_decode

from services.gateway import demo
from services.identity import holder
from services.transit import ridecode
from services.transit.denylist import Delta, DenyList
from services.transit.gate import GateVerifier
from services.wallet.config import WalletConfig
from services.wallet.finance import SETTLE_AFTER
from services.wallet.settlement import BusinessDay
from tests.integration.test_transit import dearest_ride
from tests.support import REPO, eventually, free_port

START_TIMEOUT_S = 120
NOTES = "tests.platform_app:SERVICE"
# The whole city of the README: the gateway in front of the wallet (and the platform's notes).
CITY = (NOTES, "wallet", "identity", "transit", "gateway")


class City:
    """One `cardless up` process and the URLs it printed (read from a file: its servers
    inherit its stdout, so a pipe would outlive it)."""

    def __init__(self, data_dir: Path, services: tuple[str, ...] = (NOTES,)) -> None:
        self.data_dir, self.services = data_dir, services
        self.out = data_dir.with_suffix(".out")
        self.urls: dict[str, str] = {}
        self.proc: subprocess.Popen[bytes] | None = None

    async def __aenter__(self) -> City:
        with self.out.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shared.cli", "up", "--data-dir", str(self.data_dir)],
                env=city_env(self.services),
                cwd=REPO,
                stdout=out,
            )
        lines = await eventually(
            self._printed, self._ready, within=START_TIMEOUT_S, what="cardless up ready"
        )
        self.urls = dict(line.partition(": ")[::2] for line in lines if ": " in line)
        return self

    async def _printed(self) -> list[str]:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"cardless up exited early with {self.proc.returncode}")
        return self.out.read_text().splitlines()

    @staticmethod
    def _ready(lines: list[str]) -> bool:
        return any(line.startswith("ready: ") for line in lines)

    async def interrupt(self) -> int:
        """Ctrl-C, as a terminal sends it; the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        return await asyncio.to_thread(self.proc.wait, 60)

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            await self.interrupt()


def city_env(services: tuple[str, ...] = (NOTES,)) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    # A free port for the gateway: 8080 may be taken on the machine running the tests.
    env.update(
        CARDLESS_SERVICES=",".join(services),
        GATEWAY_PORT=str(free_port()),
        PYTHONPATH=str(REPO),
    )
    return env


async def cardless(*args: str, gateway: str, data_dir: Path) -> str:
    """What `cardless <args> --gateway <url> --data-dir <dir>` prints, as a newcomer runs it."""
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "shared.cli", *args),
        *("--gateway", gateway, "--data-dir", str(data_dir)),
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode() + out.decode()
    return out.decode().strip()


def last_final_day() -> date:
    """The README's "yesterday": the last business day whose statement is final, whatever the
    hour of the run (the wallet's day starts at its cut-off, in its zone)."""
    wallet = WalletConfig()
    settled = datetime.now(UTC) - SETTLE_AFTER
    current = BusinessDay.of(settled, wallet.business_tz, wallet.business_cutoff)
    return current.date - timedelta(days=1)


async def test_up_serves_ready_services_stops_cleanly_and_keeps_its_data(tmp_path: Path) -> None:
    async with City(tmp_path / "city", CITY) as city, aiohttp.ClientSession() as http:
        assert city.urls["redis"].startswith("redis://127.0.0.1:")
        services = {name: url for name, url in city.urls.items() if url.startswith("http://")}
        assert set(services) == {"notes", "wallet", "identity", "transit", "gateway", "sandbox"}
        for url in services.values():
            async with http.get(f"{url}/readyz") as response:
                assert response.status == 200
        async with http.post(f"{services['notes']}/notes", json={"key": "kept"}) as response:
            assert response.status == 201
            note_id = (await response.json())["id"]
        await the_readmes_first_request_works(http, services["gateway"], tmp_path / "city")
        await a_rider_tops_up_through_the_sandbox(services["gateway"], tmp_path / "city")
        await an_agency_checks_the_demo_citizens_id(services["gateway"], tmp_path / "city")
        assert "verified" in await audit_verify(city.urls["postgres"])
        await the_demo_rider_is_refused_senior_fares(services["gateway"], tmp_path / "city")
        await a_ride_through_the_gates_is_charged_once(services["gateway"], tmp_path / "city")
        assert await city.interrupt() == 0

    async with City(tmp_path / "city") as again, aiohttp.ClientSession() as http:
        async with http.get(f"{again.urls['notes']}/notes/{note_id}") as response:
            assert response.status == 200
            assert (await response.json())["key"] == "kept"
        assert await again.interrupt() == 0


async def the_readmes_first_request_works(
    http: aiohttp.ClientSession, gateway: str, data_dir: Path
) -> None:
    """A demo client's token from `cardless token`, then yesterday's statement through the
    gateway with it; and the gateway's own pages."""
    token = await cardless("token", "city-finance", gateway=gateway, data_dir=data_dir)
    yesterday = last_final_day()
    statement = f"{gateway}/v1/wallet/operators/metro/statements/{yesterday}.json"
    async with http.get(statement, headers={"Authorization": f"Bearer {token}"}) as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "application/json"
        body = await response.json()
    assert body["owner"] == "operator:metro"
    assert body["business_day"] == yesterday.isoformat()
    for page in ("/readyz", "/docs"):
        async with http.get(f"{gateway}{page}") as response:
            assert response.status == 200, page
    async with http.get(f"{gateway}/openapi.json") as response:
        assert response.status == 200
        document = await response.json()
    assert "/v1/wallet/operators/{operator}/statements/{day}.{format}" in document["paths"]
    assert {"/v1/identity/presentations", "/v1/transit/taps"} <= document["paths"].keys()


async def a_rider_tops_up_through_the_sandbox(gateway: str, data_dir: Path) -> None:
    """The README's rider: a top-up order from the phone (DPoP), paid in the sandbox provider
    (its signed notification), the money in the balance; then a refund the wallet asks the
    sandbox for by signed webhook, settled by the sandbox's signed answer."""
    asked = json.dumps({"provider": "sandbox", "amount": 1250, "currency": "CNY"})
    order = json.loads(await rider(gateway, data_dir, "POST", "/v1/wallet/topups", asked))
    assert order["status"] == "awaiting_payment"
    paying = ("sandbox", "pay", order["id"], order["pay"]["amount"])
    await cardless(*paying, gateway=gateway, data_dir=data_dir)
    assert await balance(gateway, data_dir) == {"currency": "CNY", "available": 1250, "held": 0}

    refund = json.dumps({"amount": 250, "currency": "CNY"})
    await rider(gateway, data_dir, "POST", f"/v1/wallet/topups/{order['id']}/refunds", refund)
    await eventually(
        lambda: balance(gateway, data_dir),
        lambda now: now == {"currency": "CNY", "available": 1000, "held": 0},
        what="the refund settled by the sandbox",
    )


async def an_agency_checks_the_demo_citizens_id(gateway: str, data_dir: Path) -> None:
    """The README's ID check: the registry issues the demo citizen an ID bound to a phone key,
    the agency asks for two claims, the phone answers, the agency reads exactly those; the
    citizen (signed in as the demo rider) finds the check in their log."""
    seen = json.loads(await cardless("id-check", gateway=gateway, data_dir=data_dir))
    assert seen["phone"]["status"] == 200, seen
    assert seen["agency"]["state"] == "verified"
    assert seen["agency"]["claims"] == {"age_over_18": True, "resident": True}
    log = json.loads(await rider(gateway, data_dir, "GET", "/v1/identity/audit"))
    [entry] = log["entries"]
    assert (entry["agency"], entry["result"]) == ("city-agency", "verified")
    assert entry["claims"] == ["age_over_18", "resident"]


async def the_demo_rider_is_refused_senior_fares(gateway: str, data_dir: Path) -> None:
    """The demo rider asks for senior fares: transit asks identity, as its registered agency
    through the gateway, for their account's `age_over_65`; the phone answers with the city ID
    issued above; born in 1990, they are refused, and see transit's check in their log."""

    def story() -> tuple[int, Any]:
        once = {"Idempotency-Key": f'"{uuid.uuid4()}"'}
        status, asked = demo.rider_call(data_dir, gateway, "POST", "/v1/transit/concessions",
                                        {"category": "senior"}, once)  # fmt: skip
        assert status == 201, asked
        status, answered = holder.respond(data_dir, asked["authorization_request"])
        assert status == 200, answered
        claim = f"/v1/transit/concessions/{asked['concession_id']}/claim"
        return demo.rider_call(data_dir, gateway, "POST", claim, None, once)

    status, claimed = await asyncio.to_thread(story)
    assert (status, claimed["reason"]) == (403, "not_eligible")
    log = json.loads(await rider(gateway, data_dir, "GET", "/v1/identity/audit"))
    assert ("metro-concessions", ["age_over_65"]) in [
        (e["agency"], e["claims"]) for e in log["entries"]
    ]


async def a_ride_through_the_gates_is_charged_once(gateway: str, data_dir: Path) -> None:
    """The README's rider rides: the phone enrols its key for a ride credential, two gates
    that fetched the issuer keys decide offline, the gate uploads its taps (twice), and the
    wallet (10.00 after the top-up and refund above) is debited the 2.00 fare once."""
    phone = load_pem_private_key((data_dir / "rider" / "phone.pem").read_bytes(), None)
    assert isinstance(phone, Ed25519PrivateKey)
    jwk = json.loads(OKPAlgorithm.to_jwk(phone.public_key()))
    asked = json.dumps({"device_jwk": jwk})
    enrolled = json.loads(await rider(gateway, data_dir, "POST", "/v1/transit/credentials", asked))
    station = Station(gateway, data_dir, base64url_decode(enrolled["credential"]), phone)
    async with aiohttp.ClientSession() as http:
        await station.sync(http)
        now = datetime.now(UTC)
        taps = [await station.tap("WG", "entry", now), await station.tap("OT", "exit", now)]
        for _ in range(2):  # a gate that was not sure its upload arrived sends it again
            await station.upload(http, taps)
        await eventually(
            lambda: balance(gateway, data_dir),
            lambda now: now == {"currency": "CNY", "available": 800, "held": 0},
            what="the fare debited once",
        )
        await a_rider_short_of_money_is_denied_until_a_top_up_pays_the_fare(http, station)


async def a_rider_short_of_money_is_denied_until_a_top_up_pays_the_fare(
    http: aiohttp.ClientSession, station: Station
) -> None:
    """The rider (8.00) rides the dearest ride (5.00) there and back through gates that were
    offline; their taps arrive late. The second fare cannot be taken: the next gate to sync its deny
    list turns the rider away, until a top-up of 5.00 through the sandbox pays the fare owed
    and lets them through again (3.00 left)."""
    gateway, data_dir = station.gateway, station.data_dir
    origin, destination, fare = dearest_ride()
    earlier = datetime.now(UTC) - timedelta(hours=2)
    taps = []
    for ride in range(2):
        # The gates of an hour ago: their pass-back memory of this rider is long gone.
        station = Station(gateway, data_dir, station.credential, station.phone, station.counter)
        await station.sync(http)  # before the network went down
        start = earlier + timedelta(minutes=40 * ride)
        taps += [await station.tap(origin, "entry", start),
                 await station.tap(destination, "exit", start + timedelta(minutes=30))]  # fmt: skip
    await station.upload(http, taps)  # the network is back: the day's taps, late
    await station.upload(http, taps)  # and again
    await eventually(lambda: station.sync(http), bool, what="the rider on the deny list")
    assert await station.scan(destination, "entry") == "denied"
    assert (await balance(gateway, data_dir))["available"] == 800 - fare

    asked = json.dumps({"provider": "sandbox", "amount": fare, "currency": "CNY"})
    order = json.loads(await rider(gateway, data_dir, "POST", "/v1/wallet/topups", asked))
    await cardless("sandbox", "pay", order["id"], order["pay"]["amount"],
                   gateway=gateway, data_dir=data_dir)  # fmt: skip
    await eventually(lambda: station.sync(http), lambda changed: changed, what="let through")
    assert await station.scan(destination, "entry") == "ok"
    assert (await balance(gateway, data_dir))["available"] == 800 - fare, "the fare owed taken"


class Station:
    """Gates at the demo metro's stations, as a station controller runs them: issuer keys and
    deny list fetched through the gateway while the network is up, codes decided offline,
    taps uploaded with the gate client's token."""

    def __init__(
        self,
        gateway: str,
        data_dir: Path,
        credential: bytes,
        phone: Ed25519PrivateKey,
        counter: int = 0,  # the phone's: its codes count up
    ) -> None:
        self.gateway, self.data_dir = gateway, data_dir
        self.credential, self.phone, self.counter = credential, phone, counter
        self.gates: dict[str, GateVerifier] = {}
        self.deny, self.keys = DenyList(), dict[str, ridecode.PublicKey]()

    async def sync(self, http: aiohttp.ClientSession) -> bool:
        """Fetch the issuer keys and the deny list's changes; whether the list changed."""
        async with http.get(f"{self.gateway}/v1/transit/issuer-keys") as response:
            self.keys = {
                k["kid"]: ridecode.load_public_key(ridecode.ED25519, base64url_decode(k["x"]))
                for k in (await response.json())["keys"]
            }
        url = f"{self.gateway}/v1/transit/deny-list?since={self.deny.version}"
        async with http.get(url, headers=await self._auth()) as response:
            assert response.status in (200, 204), await response.text()
            body = await response.read()
        before = self.deny.version
        if body and before == 0:
            self.deny = DenyList.load(body)
        elif body:
            self.deny.apply(Delta.decode(body))
        return self.deny.version != before

    async def tap(self, station: str, direction: str, at: datetime) -> dict[str, str]:
        """The rider's phone shows a fresh code at a gate of ``station``, it opens, and the gate
        logs the tap as at ``at``."""
        gate = self._gate(station)
        self.counter += 1
        now = int(time.time()) + self.counter
        code = ridecode.make_code(self.credential, device_key=self.phone, timestamp=now,
                                  counter=self.counter)  # fmt: skip
        decision = gate.scan(code, now=now, direction=direction)
        assert decision.open, decision.reason
        return {
            "tap_id": str(uuid.uuid4()), "station": station, "direction": direction,
            "at": at.isoformat(), "rider": base64.b64encode(decision.rider or b"").decode(),
            "credential_id": base64.b64encode(decision.credential_id or b"").decode(),
        }  # fmt: skip

    async def scan(self, station: str, direction: str) -> str:
        """What a gate of ``station`` decides for the rider's code now: its reason code."""
        self.counter += 1
        now = int(time.time()) + self.counter
        code = ridecode.make_code(self.credential, device_key=self.phone, timestamp=now,
                                  counter=self.counter)  # fmt: skip
        return self._gate(station).scan(code, now=now, direction=direction).reason

    async def upload(self, http: aiohttp.ClientSession, taps: list[dict[str, str]]) -> None:
        url = f"{self.gateway}/v1/transit/taps"
        async with http.post(url, json={"taps": taps}, headers=await self._auth()) as response:
            assert response.status == 200, await response.text()

    def _gate(self, station: str) -> GateVerifier:
        if station not in self.gates:
            self.gates[station] = GateVerifier(station=station, issuer_keys={}, deny=self.deny)
        gate = self.gates[station]
        for kid, key in self.keys.items():
            gate.add_issuer_key(kid, key)
        gate.replace_deny_list(self.deny)
        return gate

    async def _auth(self) -> dict[str, str]:
        token = await cardless(
            "token", "station-0001", gateway=self.gateway, data_dir=self.data_dir
        )
        return {"Authorization": f"Bearer {token}"}


async def audit_verify(database_url: str) -> str:
    """What `DATABASE_URL=… cardless audit verify` prints; it exits 0 on an untouched log."""
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "shared.cli", "audit", "verify"),
        env={**os.environ, "PYTHONPATH": str(REPO), "DATABASE_URL": database_url},
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode() + out.decode()
    return out.decode()


async def rider(gateway: str, data_dir: Path, method: str, path: str, body: str = "") -> str:
    """What `cardless rider <method> <path> [--json body]` prints."""
    args = ("rider", method, path, *(("--json", body) if body else ()))
    return await cardless(*args, gateway=gateway, data_dir=data_dir)


async def balance(gateway: str, data_dir: Path) -> dict[str, object]:
    answer: dict[str, object] = json.loads(
        await rider(gateway, data_dir, "GET", "/v1/wallet/balance")
    )
    return answer


async def test_a_second_up_on_a_data_dir_in_use_fails_in_one_line(tmp_path: Path) -> None:
    async with City(tmp_path / "city"):
        second = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "shared.cli",
            "up",
            "--data-dir",
            str(tmp_path / "city"),
            env=city_env(),
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(second.communicate(), 60)
        assert second.returncode == 1
        message = err.decode().strip().splitlines()[-1]
        assert "is in use by another `cardless up`" in message
        assert "Traceback" not in err.decode()
