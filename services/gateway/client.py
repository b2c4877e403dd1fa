"""A client of the city's gateway, as a gate, a station or a service calling another service
through it is one: OAuth2 client credentials with ``private_key_jwt`` (RFC 7523), a token
renewed before it expires and once more after a 401, and requests with it. Async (aiohttp):
never a blocking call on an event loop.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import NamedTuple

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.gateway.tokens import CLIENT_ASSERTION_TYPE, CLIENT_CREDENTIALS
from shared.ids import new_id

PrivateKey = Ed25519PrivateKey | EllipticCurvePrivateKey

TOKEN_MARGIN_S = 30.0  # a token is renewed this long before it expires
Query = Mapping[str, str] | None


def private_key_jwt(client_id: str, key: PrivateKey, kid: str) -> Callable[[str], str]:
    """What signs a client's assertions (RFC 7523 §2.2): short-lived, single-use (``jti``),
    for the token URL it is given; EdDSA for an Ed25519 key, ES256 for a P-256 one."""
    algorithm = "EdDSA" if isinstance(key, Ed25519PrivateKey) else "ES256"

    def sign(token_url: str) -> str:
        now = int(time.time())
        claims = {"iss": client_id, "sub": client_id, "aud": token_url, "iat": now,
                  "exp": now + 60, "jti": str(new_id())}  # fmt: skip
        return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid})

    return sign


class GatewayError(Exception):
    """The gateway could not be used just now (no token, an answer that is not one)."""


class Answer(NamedTuple):
    """What the gateway answered: read whole, the connection given back at once."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class GatewayClient:
    """Requests to the gateway at ``gateway_url`` as one client; ``assertion`` signs a
    ``private_key_jwt`` assertion for the token URL it is given."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        gateway_url: str,
        assertion: Callable[[str], str],
        scope: str | None = None,
    ) -> None:
        self._http, self._base = http, gateway_url.rstrip("/")
        self._assertion, self._scope = assertion, scope
        self._token: str | None = None
        self._renew_at = 0.0

    def url(self, path: str) -> str:
        return self._base + path

    async def request(
        self, method: str, path: str, body: bytes | None = None, query: Query = None
    ) -> Answer:
        """A request with the client's token; once more with a fresh one after a 401."""
        answer = await self._send(method, path, body, query)
        if answer.status == 401:
            self._token = None
            answer = await self._send(method, path, body, query)
        return answer

    async def _send(self, method: str, path: str, body: bytes | None, query: Query) -> Answer:
        token = self._token
        if token is None or time.monotonic() >= self._renew_at:
            token = await self._fetch_token()
        headers = {"Authorization": f"Bearer {token}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        async with self._http.request(
            method, self.url(path), headers=headers, data=body, params=query
        ) as got:
            return Answer(got.status, got.headers, await got.read())

    async def _fetch_token(self) -> str:
        token_url = self.url("/oauth/token")
        form = {"grant_type": CLIENT_CREDENTIALS, "client_assertion_type": CLIENT_ASSERTION_TYPE,
                "client_assertion": self._assertion(token_url)}  # fmt: skip
        if self._scope:
            form["scope"] = self._scope
        async with self._http.post(token_url, data=form) as answer:
            if answer.status != 200:
                raise GatewayError(f"the gateway refused a token ({answer.status})")
            body = await answer.read()
        try:
            granted = json.loads(body)
            token, ttl = str(granted["access_token"]), float(granted.get("expires_in", 60))
        except (ValueError, TypeError, KeyError, AttributeError):
            raise GatewayError("the token endpoint's answer is not a token") from None
        self._renew_at = time.monotonic() + max(ttl - TOKEN_MARGIN_S, ttl / 2)
        self._token = token
        return token
