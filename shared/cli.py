"""The ``cardless`` command: up, serve, migrate, token, bench."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import asyncpg
from redis.exceptions import RedisError

from services.gateway import demo
from shared import city, logs
from shared import service as services
from shared.config import ConfigError, Env, PlatformConfig
from shared.db import MigrationError
from shared.embedded import EmbeddedError

# Failures an operator can fix: printed as one line, no traceback unless --debug.
_EXPECTED = (
    ConfigError,
    EmbeddedError,
    MigrationError,
    city.StartError,
    demo.DemoError,
    LookupError,
    OSError,
    asyncpg.PostgresError,
    RedisError,
)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result: int = args.run(args)
        return result
    except _EXPECTED as exc:
        if args.debug:
            raise
        print(f"cardless {args.command}: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno == 98:
        return f"address already in use ({exc.strerror}); set PORT to a free port"
    return " ".join(str(exc).split()) or type(exc).__name__


def _up(args: argparse.Namespace) -> int:
    logs.configure("cardless", "info")
    data_dir = args.data_dir or city.default_data_dir(os.environ)
    appendfsync = args.appendfsync or city.env_appendfsync(os.environ)
    return city.up(Path(data_dir), appendfsync, os.environ)


def _serve(args: argparse.Namespace) -> int:
    service = services.load(args.service)
    config = PlatformConfig.from_env(service.name)
    logs.configure(service.name, config.log_level)
    services.serve(service, config)
    return 0


def _migrate(args: argparse.Namespace) -> int:
    database_url = Env(os.environ).url("DATABASE_URL", ("postgresql", "postgres"))
    names = [args.service] if args.service else services.selected(os.environ)

    async def run() -> None:
        for name in names:
            applied = await services.migrate(services.load(name), database_url)
            print(f"{name}: {len(applied)} migration(s) applied", flush=True)

    asyncio.run(run())
    return 0


def _token(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir or city.default_data_dir(os.environ))
    gateway = args.gateway or f"http://127.0.0.1:{Env(os.environ).integer('GATEWAY_PORT', 8080)}"
    print(demo.access_token(data_dir, args.client, gateway, args.scope), flush=True)
    return 0


def _bench(args: argparse.Namespace) -> int:
    logs.configure("bench", "warning")
    module = importlib.import_module(f"bench.{args.name.replace('-', '_')}")
    result = module.main(args.options)
    print(json.dumps(result), flush=True)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cardless", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="start the whole city (embedded servers if no URLs)")
    up.add_argument("--data-dir", help="where embedded servers keep data (default ./.cardless)")
    up.add_argument(
        "--appendfsync",
        choices=["everysec", "always"],
        help="Valkey AOF fsync policy (default everysec)",
    )
    up.set_defaults(run=_up)

    serve = commands.add_parser("serve", help="run one service (what a container runs)")
    serve.add_argument("service", help="a registered name, or module:attribute")
    serve.set_defaults(run=_serve)

    migrate = commands.add_parser("migrate", help="apply migrations only")
    migrate.add_argument("service", nargs="?", help="one service (default: all)")
    migrate.set_defaults(run=_migrate)

    token = commands.add_parser("token", help="an access token for a demo client (after `up`)")
    token.add_argument("client", help="a demo client: city-finance, sandbox-pay, ...")
    token.add_argument("--scope", help="ask for fewer scopes than the client holds")
    token.add_argument("--gateway", help="the gateway's URL (default http://127.0.0.1:8080)")
    token.add_argument("--data-dir", help="where `up` keeps the demo keys (default ./.cardless)")
    token.set_defaults(run=_token)

    bench = commands.add_parser("bench", help="run a benchmark; ends with one JSON line")
    bench.add_argument("name", help="e.g. bus")
    bench.add_argument("options", nargs=argparse.REMAINDER, help="passed to the benchmark")
    bench.set_defaults(run=_bench)
    return parser


if __name__ == "__main__":
    sys.exit(main())
