"""The ``cardless`` command: up, serve, migrate, bench, audit, fares, and the demo city's
parties (token, rider, sandbox, id-check)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import asyncpg
from redis.exceptions import RedisError

from shared import logs
from shared import service as services
from shared.config import Env, OperatorError, PlatformConfig
from shared.ids import new_id

# Failures an operator can fix: printed as one line, no traceback unless --debug.
_EXPECTED = (OperatorError, LookupError, OSError, asyncpg.PostgresError, RedisError)

# Each command imports what it needs when it runs: `cardless serve`, which a supervisor
# restarts after a crash, then starts without loading the demo city or the embedded servers.


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
    from shared import city

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
    from services.gateway import demo

    print(demo.access_token(_data_dir(args), args.client, _gateway(args), args.scope), flush=True)
    return 0


def _rider(args: argparse.Namespace) -> int:
    from services.gateway import demo

    headers = {"Idempotency-Key": f'"{new_id()}"'} if args.method == "POST" else {}
    try:
        body = json.loads(args.json) if args.json else None
    except ValueError:
        raise demo.DemoError("--json: not valid JSON") from None
    status, answer = demo.rider_call(
        _data_dir(args), _gateway(args), args.method, args.path, body, headers
    )
    print(json.dumps(answer, indent=2) if not isinstance(answer, str) else answer, flush=True)
    return 0 if status < 400 else 1


def _sandbox(args: argparse.Namespace) -> int:
    from services.wallet import sandbox
    from shared import city

    if args.action == "serve":
        port = Env(os.environ).integer("PORT", 8090)
        sandbox.serve(_data_dir(args), _gateway(args), port)
        return 0
    if args.order_id is None or args.amount is None:
        raise sandbox.SandboxError("pay needs an order id and an amount, e.g. pay <id> 12.50")
    url = os.environ.get(city.SANDBOX_URL) or sandbox.url_in(_data_dir(args))
    answer = sandbox.pay(url, args.order_id, args.amount, args.currency)
    print(json.dumps(answer), flush=True)
    return 0


def _fares(args: argparse.Namespace) -> int:
    """Price journeys read as JSON lines on stdin with a feed, before it is published."""
    from services.transit import feed, quote

    logs.configure("fares", "warning")
    path = Path(args.feed) if args.feed else feed.DEMO_FEED
    return quote.quote(path, sys.stdin, sys.stdout)


def _id_check(args: argparse.Namespace) -> int:
    from services.identity import holder

    print(json.dumps(holder.id_check(_data_dir(args), _gateway(args)), indent=2), flush=True)
    return 0


def _audit(args: argparse.Namespace) -> int:
    """Walk identity's audit log; exit 1 naming the first bad entry."""
    from services.identity import auditlog

    database_url = Env(os.environ).url("DATABASE_URL", ("postgresql", "postgres"))
    finding = asyncio.run(auditlog.verify_database(database_url))
    if finding is None:
        print("audit log verified: every entry chained, in the tree, and under its checkpoints")
        return 0
    print(f"audit log TAMPERED at entry {finding.seq}: {finding.problem}: {finding.detail}")
    return 1


def _riders(args: argparse.Namespace) -> int:
    """Fresh ride codes of the demo riders, one base64url line each, for a gate's stdin."""
    from shared import riders

    codes = riders.ride_codes(_data_dir(args), args.start, args.count)
    sys.stdout.write("".join(f"{code}\n" for code in codes))
    sys.stdout.flush()
    return 0


def _data_dir(args: argparse.Namespace) -> Path:
    from shared import city

    return Path(args.data_dir or city.default_data_dir(os.environ))


def _gateway(args: argparse.Namespace) -> str:
    port = Env(os.environ).integer("GATEWAY_PORT", 8080)
    return str(args.gateway or f"http://127.0.0.1:{port}")


def _bench(args: argparse.Namespace) -> int:
    logs.configure("bench", "warning")
    # SIGTERM unwinds like Ctrl-C, so the throwaway servers the benchmark started are stopped.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    module = importlib.import_module(f"bench.{args.name.replace('-', '_')}")
    result = module.main(args.options)
    print(json.dumps(result), flush=True)
    return 0


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


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
    token.add_argument("client", help="a demo client: city-finance, sandbox (the provider), ...")
    token.add_argument("--scope", help="ask for fewer scopes than the client holds")
    token.set_defaults(run=_token)

    rider = commands.add_parser("rider", help="a request from the demo rider's phone (DPoP)")
    rider.add_argument("method", choices=["GET", "POST"])
    rider.add_argument("path", help="e.g. /v1/wallet/balance")
    rider.add_argument("--json", help="the request body, JSON")
    rider.set_defaults(run=_rider)

    pay = commands.add_parser("sandbox", help="the demo payment provider: serve, or pay an order")
    pay.add_argument("action", choices=["pay", "serve"])
    pay.add_argument("order_id", nargs="?", help="pay: the top-up order's id")
    pay.add_argument("amount", nargs="?", help="pay: what the rider paid, e.g. 12.50")
    pay.add_argument("--currency", default="CNY")
    pay.set_defaults(run=_sandbox)

    fares = commands.add_parser(
        "fares", help="test a GTFS fare table: quote journeys (JSON lines on stdin)"
    )
    fares.add_argument("action", choices=["quote"])
    fares.add_argument("--feed", help="a GTFS feed, folder or zip (default: the demo metro's)")
    fares.set_defaults(run=_fares)

    id_check = commands.add_parser(
        "id-check", help="the demo's ID check: registry issues, agency asks, phone answers"
    )
    id_check.set_defaults(run=_id_check)

    audit = commands.add_parser("audit", help="identity's audit log (needs DATABASE_URL)")
    audit.add_argument("action", choices=["verify"])
    audit.set_defaults(run=_audit)

    riders = commands.add_parser("riders", help="the demo riders (seeded by `up`): ride codes")
    riders.add_argument("action", choices=["codes"])
    riders.add_argument("--count", type=int, default=1, help="how many riders (default 1)")
    riders.add_argument("--start", type=int, default=0, help="the first rider's number")
    riders.add_argument("--data-dir", help="where `up` keeps the demo riders' keys")
    riders.set_defaults(run=_riders)

    for demo_command in (token, rider, pay, id_check):
        demo_command.add_argument("--gateway", help="the gateway (default http://127.0.0.1:8080)")
        demo_command.add_argument("--data-dir", help="where `up` keeps the demo keys")

    bench = commands.add_parser("bench", help="run a benchmark; ends with one JSON line")
    bench.add_argument("name", help="e.g. bus, ledger, gateway, identity, taps")
    bench.add_argument("options", nargs=argparse.REMAINDER, help="passed to the benchmark")
    bench.set_defaults(run=_bench)

    gate = commands.add_parser(
        "gate", help="a station's bank of gates: codes on stdin, a JSON decision line each"
    )
    gate.add_argument("--station", required=True, help="the station's id, e.g. WG")
    gate.add_argument("--gates", type=int, default=4, help="gates: half entry, half exit")
    gate.add_argument("--client", default="station-0001", help="the gate's client at the gateway")
    gate.add_argument("--batch", type=int, default=500, help="taps per upload (default 500)")
    gate.add_argument("--sync-s", type=float, default=60.0, help="seconds between key syncs")
    gate.add_argument("--gateway", help="the gateway (default http://127.0.0.1:8080)")
    gate.add_argument("--data-dir", help="the city's (keys; the gate's disk in gates/<station>)")
    gate.set_defaults(run=_gate)
    return parser


def _gate(args: argparse.Namespace) -> int:
    """A station controller: scan codes from stdin, buffer taps on disk, upload them."""
    from services.transit import station

    logs.configure("gate", "info")
    settings = station.StationSettings(
        station=args.station, gateway_url=_gateway(args), data_dir=_data_dir(args),
        client_id=args.client, gates=args.gates, batch=args.batch, sync_s=args.sync_s,
    )  # fmt: skip
    return station.main(settings)


if __name__ == "__main__":
    sys.exit(main())
