"""Helpers for tests: waiting with a deadline, real service processes to kill, and the
gateway's tokens as services receive them."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TypeVar

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import OKPAlgorithm

from shared.auth import parse_jwks
from shared.config import AuthConfig, PlatformConfig

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent
POLL_INTERVAL_S = 0.02


async def eventually(
    probe: Callable[[], Awaitable[T]],
    accept: Callable[[T], bool],
    *,
    within: float = 30.0,
    what: str = "condition",
) -> T:
    """Poll ``probe`` until ``accept`` holds, or fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {within}s; last: {value!r}")
        await asyncio.sleep(POLL_INTERVAL_S)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServiceProcess:
    """`cardless serve <target>` as a real OS process that tests can SIGKILL."""

    def __init__(self, target: str, env: Mapping[str, str]) -> None:
        self.port = free_port()
        self.env = {**env, "PORT": str(self.port), "LOG_LEVEL": "warning"}
        self.target = target
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, **extra_env: str) -> ServiceProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "serve", self.target],
            env={**self.env, **extra_env},
            cwd=REPO,
        )
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def exited(self, within: float = 60.0) -> int:
        """Wait for the process to exit (e.g. by its own failpoint); its return code."""
        assert self.proc is not None
        proc = self.proc
        await eventually(
            _async(proc.poll), lambda code: code is not None, within=within, what="process exit"
        )
        return proc.returncode

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.terminate()
        return self.proc.wait(timeout=60)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def _async(fn: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    async def call() -> T:
        return fn()

    return call


# What the gateway forwards to a service: a short internal token signed by a key the service
# trusts (``behind_the_gateway``), so service tests authenticate callers the way production does.
GATEWAY_KEY = Ed25519PrivateKey.generate()
GATEWAY_KID = "gw-1"


def gateway_token(subject: str, *scopes: str) -> dict[str, str]:
    """The Authorization header of a request the gateway forwarded for ``subject``; minted when
    used, never at import: a token made at collection would expire mid-session."""
    now = int(time.time())
    claims = {"iss": "cardless-gateway", "aud": "cardless-internal", "sub": subject,
              "scope": " ".join(scopes), "iat": now, "exp": now + 300}  # fmt: skip
    signed = jwt.encode(claims, GATEWAY_KEY, algorithm="EdDSA", headers={"kid": GATEWAY_KID})
    return {"Authorization": f"Bearer {signed}"}


def behind_the_gateway(config: PlatformConfig) -> PlatformConfig:
    """``config`` with the gateway's key as the one services verify tokens against."""
    jwk = json.loads(OKPAlgorithm.to_jwk(GATEWAY_KEY.public_key()))
    keys = parse_jwks(json.dumps({"keys": [{**jwk, "kid": GATEWAY_KID, "alg": "EdDSA"}]}))
    return dataclasses.replace(config, auth=AuthConfig(jwks=keys))
