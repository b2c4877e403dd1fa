"""``cardless up``: the whole city on one machine.

Starts embedded Valkey and PostgreSQL when no ``REDIS_URL`` / ``DATABASE_URL`` is given, applies
every service's migrations, seeds the demo riders (``CARDLESS_DEMO_RIDERS``, each service its
own part), starts each service as its own OS process (``cardless serve``), waits
until each answers ``/readyz``, then starts the gateway in front of them (told where they are,
with the demo city's clients from ``demo``) and, for the wallet, the demo's sandbox payment
provider, prints where everything is, and on Ctrl-C or
SIGTERM stops the processes first (they drain requests and acknowledge what they applied), then
the servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from services.gateway import demo
from services.identity import holder
from services.wallet import sandbox
from shared import riders
from shared import service as services
from shared.config import Env, OperatorError
from shared.embedded import EmbeddedServers

READY_TIMEOUT_S = 60.0
GATEWAY = "gateway"
SANDBOX_URL = "CARDLESS_SANDBOX_URL"  # where `cardless sandbox pay` finds the demo's provider
PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>


class StartError(OperatorError):
    """The city could not start; one line saying why."""


@dataclass(frozen=True)
class Servers:
    redis_url: str
    database_url: str


@contextlib.contextmanager
def servers(
    data_dir: Path, appendfsync: Literal["everysec", "always"], environ: Mapping[str, str]
) -> Iterator[Servers]:
    """The servers in the environment, or embedded ones kept in ``data_dir``."""
    env = Env(environ)
    redis_url = environ.get("REDIS_URL") and env.url("REDIS_URL", ("redis", "rediss", "unix"))
    database_url = environ.get("DATABASE_URL") and env.url(
        "DATABASE_URL", ("postgresql", "postgres")
    )
    if redis_url and database_url:
        yield Servers(redis_url, database_url)
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    with EmbeddedServers(data_dir, appendfsync=appendfsync) as embedded:
        yield Servers(redis_url or embedded.valkey.url, database_url or embedded.postgres.url)


def up(
    data_dir: Path, appendfsync: Literal["everysec", "always"], environ: Mapping[str, str]
) -> int:
    """Run the city until a signal; 0 after a clean stop."""
    stop = _stop_on_signals()
    names = services.selected(environ)
    chosen = [services.load(name) for name in names]
    with servers(data_dir, appendfsync, environ) as urls:
        print(f"redis: {urls.redis_url}", flush=True)
        print(f"postgres: {urls.database_url}", flush=True)
        asyncio.run(_migrate_all(chosen, urls.database_url))
        schemas = {service.name: service.schema for service in chosen}
        seeded = asyncio.run(riders.seed(schemas, urls.database_url, data_dir, environ))
        if seeded:
            print(f"riders: {seeded} demo riders, keys in {data_dir / 'riders'}", flush=True)
        procs: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
        gateway_port = Env(environ).integer("GATEWAY_PORT", 8080)
        env = _city_env(environ, urls, data_dir, gateway_port, with_sandbox="wallet" in names)
        try:
            # The services first, then the gateway in front of them, told where they are.
            if SANDBOX_URL in env:
                procs[sandbox.SANDBOX] = _spawn_sandbox(env, data_dir, gateway_port)
            for name, service in zip(names, chosen, strict=True):
                if service.name != GATEWAY:
                    procs.update(_spawn_service(service.name, name, env))
            _wait_all_ready(procs, stop)
            if GATEWAY in names:
                # One address per service: its further workers share its port.
                upstreams = {n: url for n, (_, url) in procs.items() if not _WORKER.search(n)}
                # Upstreams given in the environment (a service run elsewhere) come on top.
                upstreams.update(_given_upstreams(environ))
                procs.update(_spawn_gateway(env, upstreams, gateway_port))
                _wait_all_ready({n: p for n, p in procs.items() if n.startswith(GATEWAY)}, stop)
            print(f"ready: {len(procs)} process(es); Ctrl-C to stop", flush=True)
            return _supervise(procs, stop)
        finally:
            _terminate(procs)


_WORKER = re.compile(r"-[0-9]+$")  # a service's second, third… process: "transit-2"


def _spawn_service(
    name: str, selector: str, env: Mapping[str, str]
) -> dict[str, tuple[subprocess.Popen[bytes], str]]:
    """A service's processes (``<NAME>_WORKERS``, default 1) sharing one port, as replicas do:
    a process is one core, and the bus shares work between replicas (leases, advisory locks)."""
    variable = f"{name.upper().replace('-', '_')}_WORKERS"
    workers = Env(env).integer(variable, 1, minimum=1, maximum=64)
    worker_env = {**env, "HTTP_REUSE_PORT": "1" if workers > 1 else "0"}
    port = free_port()
    names = [name] + [f"{name}-{i}" for i in range(2, workers + 1)]
    return {n: _spawn(["serve", selector], port, worker_env) for n in names}


def _spawn_gateway(
    env: Mapping[str, str], upstreams: Mapping[str, str], port: int
) -> dict[str, tuple[subprocess.Popen[bytes], str]]:
    """The gateway's workers (``GATEWAY_WORKERS``), sharing one port: one process is one core."""
    workers = Env(env).integer("GATEWAY_WORKERS", 1, minimum=1, maximum=64)
    worker_env = {
        **env,
        "GATEWAY_UPSTREAMS": json.dumps(upstreams),
        "HTTP_REUSE_PORT": "1" if workers > 1 else "0",
    }
    names = [GATEWAY] + [f"{GATEWAY}-{i}" for i in range(2, workers + 1)]
    return {name: _spawn(["serve", GATEWAY], port, worker_env) for name in names}


def _spawn_sandbox(
    env: Mapping[str, str], data_dir: Path, gateway_port: int
) -> tuple[subprocess.Popen[bytes], str]:
    """The demo's payment provider: a party outside the city, in a process of its own."""
    url = env[SANDBOX_URL]
    port = int(url.rsplit(":", 1)[1])
    gateway = f"http://127.0.0.1:{gateway_port}"
    args = ["sandbox", "serve", "--gateway", gateway, "--data-dir", str(data_dir)]
    return _spawn(args, port, env)


def _city_env(
    environ: Mapping[str, str],
    urls: Servers,
    data_dir: Path,
    gateway_port: int,
    *,
    with_sandbox: bool,
) -> dict[str, str]:
    """What every process of the city is told: the servers, and how tokens are checked."""
    env = {**environ, "REDIS_URL": urls.redis_url, "DATABASE_URL": urls.database_url}
    if not environ.get("AUTH_JWKS") and not environ.get("AUTH_JWKS_URL"):
        env["AUTH_JWKS_URL"] = f"http://127.0.0.1:{gateway_port}/.well-known/jwks.json"
    if not environ.get("GATEWAY_CLIENTS"):
        env["GATEWAY_CLIENTS"] = f"@{demo.registry(data_dir).resolve()}"
    if not environ.get("IDENTITY_AGENCIES"):
        env["IDENTITY_AGENCIES"] = json.dumps(holder.DEMO_AGENCIES)
    concessions_key = demo.client_key_path(data_dir, "metro-concessions")
    if not environ.get("TRANSIT_IDENTITY_KEY") and concessions_key.exists():
        # Transit checks concessions with identity as a demo agency, through the gateway.
        env["TRANSIT_IDENTITY_KEY"] = f"@{concessions_key}"
        env.setdefault("TRANSIT_GATEWAY_URL", f"http://127.0.0.1:{gateway_port}")
    if with_sandbox and not environ.get("WALLET_PROVIDERS"):
        # The demo's sandbox provider: the wallet takes top-ups from it and sends it webhooks.
        env[SANDBOX_URL] = f"http://127.0.0.1:{free_port()}"
        env["WALLET_PROVIDERS"] = sandbox.providers_setting(data_dir, env[SANDBOX_URL])
    return env


def _given_upstreams(environ: Mapping[str, str]) -> dict[str, str]:
    try:
        given = json.loads(environ.get("GATEWAY_UPSTREAMS") or "{}")
    except ValueError:
        given = None
    if not isinstance(given, dict):
        raise StartError('GATEWAY_UPSTREAMS: expected JSON like {"wallet": "http://host:port"}')
    return given


def _wait_all_ready(
    procs: Mapping[str, tuple[subprocess.Popen[bytes], str]], stop: threading.Event
) -> None:
    for name, (proc, url) in procs.items():
        _wait_ready(name, proc, url, stop)
        print(f"{name}: {url}", flush=True)


async def _migrate_all(chosen: list[services.Service], database_url: str) -> None:
    for service in chosen:
        await services.migrate(service, database_url)


def _spawn(
    args: list[str], port: int, env: Mapping[str, str]
) -> tuple[subprocess.Popen[bytes], str]:
    """``cardless <args>`` as a child process listening on ``port``."""
    # Own session: a terminal's Ctrl-C reaches only us, and we stop services in order. If we
    # die without a chance to stop them, the kernel sends them SIGTERM (Linux).
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", *args],
        env={**env, "PORT": str(port), "HOST": "127.0.0.1"},
        start_new_session=True,
        preexec_fn=_terminate_with_parent,
    )
    return proc, f"http://127.0.0.1:{port}"


def _terminate_with_parent() -> None:
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_ready(name: str, proc: subprocess.Popen[bytes], url: str, stop: threading.Event) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and not stop.is_set():
        if proc.poll() is not None:
            raise StartError(
                f"service {name} exited with code {proc.returncode} while "
                "starting; its log is above"
            )
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{url}/readyz", timeout=2) as response,  # noqa: S310
        ):
            if response.status == 200:
                return
        stop.wait(0.2)
    if not stop.is_set():
        raise StartError(
            f"service {name} was not ready at {url}/readyz within {READY_TIMEOUT_S:.0f}s"
        )


def _supervise(
    procs: Mapping[str, tuple[subprocess.Popen[bytes], str]], stop: threading.Event
) -> int:
    while not stop.wait(0.5):
        for name, (proc, _) in procs.items():
            if proc.poll() is not None:
                print(
                    f"service {name} exited with code {proc.returncode}; stopping the city",
                    file=sys.stderr,
                    flush=True,
                )
                return 1
    return 0


def _terminate(procs: Mapping[str, tuple[subprocess.Popen[bytes], str]]) -> None:
    """SIGTERM every service, then wait: each drains requests and acknowledges its batch."""
    for proc, _ in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for name, (proc, _) in procs.items():
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            print(f"service {name} did not stop in 30s; killing it", file=sys.stderr)
            proc.kill()
            proc.wait()


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handle(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    return stop


def default_data_dir(environ: Mapping[str, str]) -> Path:
    return Path(environ.get("CARDLESS_DATA_DIR", ".cardless"))


def env_appendfsync(environ: Mapping[str, str]) -> Literal["everysec", "always"]:
    value = Env(environ).choice("REDIS_APPENDFSYNC", ("everysec", "always"), "everysec")
    return "always" if value == "always" else "everysec"
